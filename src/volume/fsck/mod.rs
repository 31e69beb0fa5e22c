//! `fsck`: an offline check of a whole volume, and `--salvage`, which makes
//! damaged files readable again where the damage allows.
//!
//! Checks, in order: the config (`sealfs.toml`), both keyring copies and
//! every key version in them, then depth-first every directory (both copies
//! of its record, every entry name), file (header under its path context,
//! every chunk), symlink target and leftover bookkeeping file, and finally
//! the *orphans*: backing entries no directory record accounts for (a name
//! that does not decrypt in its directory, a long name without its sidecar,
//! an unknown file). An orphan is tried against every directory's name key,
//! so ciphertext moved between directories is recognised with its original
//! plaintext path.
//!
//! Salvage (only with [`FsckOptions::salvage`]; never touches an entry that
//! checked clean):
//! * a bad chunk is re-sealed as zeros in place (same length, same last
//!   flag); a file cut at a chunk boundary gets its new final chunk re-sealed
//!   with the last flag, content kept. Only bytes of chunks that were already
//!   unreadable are written, then fdatasync, so a crash during salvage leaves
//!   nothing worse than before and salvage can run again;
//! * a damaged or missing copy of a directory record, or of the keyring, is
//!   rewritten from the good one (temp file, fsync, rename, fsync dir); a
//!   leftover `*.tmp` record is used if both copies are gone;
//! * a damaged config is rebuilt from the keyring's authenticated header;
//! * orphans move into `lost+found` in the volume root (a plain sealfs
//!   directory, visible through the mount): a recognised file or directory
//!   is re-bound to its new place (two-slot rename, docs/FORMAT.md §6) and
//!   reads as before; an unrecognised file becomes `raw-…`, a sealfs file
//!   whose content is the orphan's raw bytes; stale temp files and sidecars
//!   without their entry are removed.
//!
//! Layout: this module runs a check (offline [`fsck`], or
//! [`Volume::check_live`] beside a mount) and checks the config and the
//! keyring; [`report`] is what a run hands back; `tree` walks directories
//! and their entries; `file` checks one file's header and chunks; `orphans`
//! recognises and moves what no directory accounts for.
//!
//! Owns: what counts as a problem, and the order of every salvage write.
//! Must never: print (the CLI renders the report), or put key material or
//! plaintext content into a problem.

mod file;
mod orphans;
pub mod report;
mod tree;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::header::EncryptionContext;
use crate::format::keyring::{parse_header, KeyState};
use crate::format::names::NameCipher;
use crate::format::reserved::{CONFIG_FILE, KEYRING_BACKUP, KEYRING_FILE};
use crate::keyring::{read_copy, Unlocker, KEYRING_MODE};
use crate::sys;
use crate::volume::backing;
use crate::volume::{Directory, Volume, VolumeError};
use orphans::Orphan;

pub use report::{chunk_ranges, ByteRange, FsckReport, FsckStats, Problem, ProblemKind, Repair};

/// Plaintext name of the directory salvage moves orphans into (volume root).
pub const LOST_FOUND: &str = "lost+found";

/// What to do besides checking.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Repair what can be repaired (see the module docs).
    pub salvage: bool,
}

/// Progress counters, shared with whoever draws a progress bar.
#[derive(Debug, Default)]
pub struct FsckProgress {
    /// Backing bytes to check (known after a quick first scan).
    pub total_bytes: AtomicU64,
    /// Backing bytes checked so far.
    pub done_bytes: AtomicU64,
}

fn plain(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn rel_str(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".into()
    } else {
        p.to_string_lossy().into_owned()
    }
}

/// Sum of the sizes of every regular backing file below the directory
/// `dir` (for progress), walked through directory fds: every
/// subdirectory is opened from its parent's fd with `O_NOFOLLOW`, so a
/// symlink swapped in for one is never followed out of the cipher dir.
fn backing_bytes(dir: BorrowedFd<'_>) -> u64 {
    let Ok(rd) = backing::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                if let Ok(sub) = backing::open_dir(dir, &name) {
                    n += backing_bytes(sub.as_fd());
                }
            }
            Ok(t) if t.is_file() => {
                n += backing::stat(dir, &name).map_or(0, |st| st.st_size as u64);
            }
            _ => {}
        }
    }
    n
}

/// [`backing_bytes`] of the cipher directory at `cipherdir`.
fn cipherdir_bytes(cipherdir: &Path) -> u64 {
    sys::open_dir_path(cipherdir).map_or(0, |d| backing_bytes(d.as_fd()))
}

/// A keyring copy's bytes and generation, or why it is unusable.
type KeyringCopy = Result<(Vec<u8>, u32), String>;

/// A directory seen during the walk, for recognising moved ciphertext.
struct KnownDir {
    id: [u8; 16],
    names: NameCipher,
    path: Vec<u8>,
}

/// One run of fsck: the volume, what was found so far, and what the walk
/// learnt on the way (directories for recognising orphans, lost+found).
struct Checker<'v> {
    vol: &'v Volume,
    salvage: bool,
    /// Checking a mounted volume (check only): what changes under the
    /// check is looked at again before it is called a problem.
    live: bool,
    progress: &'v FsckProgress,
    report: FsckReport,
    root: OwnedFd,
    root_dir: Option<Directory>,
    dirs: Vec<KnownDir>,
    orphans: Vec<Orphan>,
    lost_found: Option<(OwnedFd, Directory)>,
}

/// Runs fsck on `cipherdir` (which must not be mounted: the volume lock is
/// taken, and [`VolumeError::InUse`] returned if another process holds it).
/// An `Err` means fsck could not run (wrong secret, not a volume, I/O);
/// problems it finds are in the report.
pub fn fsck(
    cipherdir: &Path,
    secret: &dyn Unlocker,
    opts: &FsckOptions,
    progress: &FsckProgress,
) -> Result<FsckReport, VolumeError> {
    // The check recurses once per directory level: run it on a thread with
    // room for trees thousands of levels deep, whatever the caller's stack.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("sealfs-fsck".into())
            .stack_size(256 << 20)
            .spawn_scoped(s, || fsck_on_this_thread(cipherdir, secret, opts, progress))
            .map_err(VolumeError::Io)?
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn fsck_on_this_thread(
    cipherdir: &Path,
    secret: &dyn Unlocker,
    opts: &FsckOptions,
    progress: &FsckProgress,
) -> Result<FsckReport, VolumeError> {
    progress
        .total_bytes
        .store(cipherdir_bytes(cipherdir), Ordering::Relaxed);
    let mut pre = Vec::new();
    let (config, rebuilt) = match Volume::read_config(cipherdir) {
        Ok(c) => (c, false),
        Err(
            e @ (VolumeError::Config(crate::format::config::ConfigError::Parse(_))
            | VolumeError::Config(crate::format::config::ConfigError::Invalid(_))
            | VolumeError::NotAVolume(_)),
        ) if Volume::looks_like_volume(cipherdir) => {
            // Rebuild from the keyring's authenticated header (opening the
            // volume below verifies it with the secret).
            let root = sys::open_dir_path(cipherdir)?;
            let header = [KEYRING_FILE, KEYRING_BACKUP]
                .iter()
                .filter_map(|n| read_copy(root.as_fd(), n).ok())
                .find_map(|b| parse_header(&b).ok());
            let Some(h) = header else { return Err(e) };
            pre.push(Problem {
                kind: ProblemKind::Config,
                path: None,
                backing: CONFIG_FILE.into(),
                message: format!(
                    "{e}; rebuilt from the keyring header (a rotation period set in it is lost)"
                ),
                ranges: vec![],
                repair: Repair::NotAttempted,
                action: None,
            });
            (crate::volume::config_from_header(&h), true)
        }
        Err(e) => return Err(e),
    };
    let kdf_on_disk = config.kdf.clone();
    let root = match secret.keyring_dir() {
        Some(d) => sys::open_dir_path(d)?,
        None => sys::open_dir_path(cipherdir)?,
    };
    let keyrings_before = [KEYRING_FILE, KEYRING_BACKUP].map(|n| {
        read_copy(root.as_fd(), n).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "missing".to_string(),
            _ => e.to_string(),
        })
    });
    // A daemon releases the lock a moment after its unmount returned: wait
    // a little before calling the volume busy.
    let mut tries = 0;
    let vol = loop {
        match Volume::open_with_config(cipherdir, secret, config.clone(), !opts.salvage, true) {
            Err(VolumeError::InUse(_)) if tries < 30 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => break other?,
        }
    };
    let mut c = Checker {
        vol: &vol,
        salvage: opts.salvage,
        live: false,
        progress,
        report: FsckReport {
            salvage: opts.salvage,
            ..FsckReport::default()
        },
        root: vol.root_fd()?,
        root_dir: None,
        dirs: Vec::new(),
        orphans: Vec::new(),
        lost_found: None,
    };
    for mut p in pre {
        if rebuilt && c.salvage {
            p.record_repair(vol.store_config(&vol.config()), "sealfs.toml rewritten");
        }
        c.report.problems.push(p);
    }
    if !rebuilt && kdf_on_disk != vol.config().kdf {
        let mut p = Problem {
            kind: ProblemKind::Config,
            path: None,
            backing: CONFIG_FILE.into(),
            message: "the [kdf] section differs from the keyring's header (which is authoritative)"
                .into(),
            ranges: vec![],
            repair: Repair::NotAttempted,
            action: None,
        };
        if c.salvage {
            // Opening the volume writable already rewrote it.
            p.record_repair(
                Ok::<(), VolumeError>(()),
                "sealfs.toml rewritten from the keyring",
            );
        }
        c.report.problems.push(p);
    }
    c.check_keyring(keyrings_before);
    let root_fd = c.root.try_clone()?;
    c.report.stats.directories += 1;
    if let Some(d) = c.check_dir_record(
        root_fd.as_fd(),
        &EncryptionContext::ROOT,
        b"",
        Path::new(""),
    ) {
        c.root_dir = Some(d.clone());
        c.check_root_attrs(&d);
        c.walk_dir(root_fd.as_fd(), &d, b"", Path::new(""));
    }
    c.handle_orphans();
    Ok(c.report)
}

impl Volume {
    /// Checks this volume while it is mounted and in use (check only, no
    /// salvage): what a concurrent write, rename or key change could make
    /// look damaged for a moment (a chunk being written, a record being
    /// replaced, an entry that moves) is looked at again, up to three times
    /// 50 ms apart, before it is reported; temp files and half-made
    /// directories, which a running daemon leaves for a moment, are not
    /// reported. Namespace changes wait while one entry is checked.
    pub fn check_live(&self, progress: &FsckProgress) -> Result<FsckReport, VolumeError> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("sealfs-fsck".into())
                .stack_size(256 << 20)
                .spawn_scoped(s, || self.check_live_on_this_thread(progress))
                .map_err(VolumeError::Io)?
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn check_live_on_this_thread(
        &self,
        progress: &FsckProgress,
    ) -> Result<FsckReport, VolumeError> {
        progress
            .total_bytes
            .store(backing_bytes(self.root()), Ordering::Relaxed);
        let mut c = Checker {
            vol: self,
            salvage: false,
            live: true,
            progress,
            report: FsckReport::default(),
            root: self.root_fd()?,
            root_dir: None,
            dirs: Vec::new(),
            orphans: Vec::new(),
            lost_found: None,
        };
        c.check_until_stable(|c| match Volume::read_config(c.vol.cipherdir()) {
            Ok(cfg) if cfg.kdf == c.vol.config().kdf => {}
            Ok(_) => {
                c.problem(
                    ProblemKind::Config,
                    None,
                    Path::new(CONFIG_FILE),
                    "the [kdf] section differs from the keyring's header (which is authoritative)",
                );
            }
            Err(e) => {
                c.problem(
                    ProblemKind::Config,
                    None,
                    Path::new(CONFIG_FILE),
                    e.to_string(),
                );
            }
        });
        c.check_until_stable(|c| {
            let now = [KEYRING_FILE, KEYRING_BACKUP]
                .map(|n| read_copy(c.vol.keyring_fd(), n).map_err(|e| e.to_string()));
            c.check_keyring(now);
        });
        let root_fd = c.root.try_clone()?;
        c.report.stats.directories += 1;
        let root = c.check_until_stable(|c| {
            let _ns = c.vol.namespace().read_recursive();
            c.check_dir_record(
                root_fd.as_fd(),
                &EncryptionContext::ROOT,
                b"",
                Path::new(""),
            )
        });
        if let Some(d) = root {
            c.root_dir = Some(d.clone());
            c.check_until_stable(|c| c.check_root_attrs(&d));
            c.walk_dir(root_fd.as_fd(), &d, b"", Path::new(""));
        }
        c.handle_orphans();
        Ok(c.report)
    }
}

impl Checker<'_> {
    /// Runs `f`; on a live volume, if it found problems, runs it again (up
    /// to three more times, 50 ms apart) and keeps only the last findings:
    /// a concurrent write or rename can make a sound object look damaged
    /// for a moment. `f` must not repair anything.
    fn check_until_stable<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> T {
        let mut tries = 0;
        loop {
            let (n, stats) = (self.report.problems.len(), self.report.stats.clone());
            let out = f(self);
            if !self.live || self.report.problems.len() == n || tries == 3 {
                return out;
            }
            self.report.problems.truncate(n);
            self.report.stats = stats;
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// An entry that went away under a live check (renamed or removed).
    fn vanished(&self, e: &io::Error) -> bool {
        self.live && e.raw_os_error() == Some(libc::ENOENT)
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        path: Option<&[u8]>,
        backing: &Path,
        message: impl Into<String>,
    ) -> usize {
        self.report.problems.push(Problem {
            kind,
            path: path.map(plain),
            backing: rel_str(backing),
            message: message.into(),
            ranges: vec![],
            repair: Repair::NotAttempted,
            action: None,
        });
        self.report.problems.len() - 1
    }

    /// Records the outcome of the repair of problem `i` (`done`: what the
    /// repair did, when it worked).
    fn record_repair<E: std::fmt::Display>(&mut self, i: usize, r: Result<(), E>, done: &str) {
        self.report.problems[i].record_repair(r, done);
    }

    /// `sealfs.root`, the root's presented attributes: absent is fine (a
    /// volume made before it existed); one that does not open is reported
    /// (the mount then shows the cipher directory's attributes), and
    /// salvage writes it anew with a new volume's defaults.
    fn check_root_attrs(&mut self, d: &Directory) {
        use crate::volume::rootattrs::new_root_attrs;
        let Err(e) = self.vol.root_attrs(d) else {
            return;
        };
        let i = self.problem(
            ProblemKind::Config,
            None,
            Path::new(crate::format::reserved::ROOT_ATTRS_FILE),
            format!("the root's attributes do not open: {e}"),
        );
        if self.salvage {
            let a = new_root_attrs();
            let r = self.vol.store_root_attrs(d, &a);
            self.record_repair(
                i,
                r,
                &format!(
                    "rewritten: the root shows mode {:o}, uid {}, gid {}",
                    a.mode, a.uid, a.gid
                ),
            );
        }
    }

    fn unrepairable(&mut self, i: usize, why: &str) {
        if self.salvage {
            self.report.problems[i].repair = Repair::Unrepairable;
            self.report.problems[i].action = Some(why.into());
        }
    }

    // ------------------------------------------------------------ keyring

    /// Checks both keyring copies as they were before the volume was opened
    /// (`before`: their bytes, or why they could not be read): a writable
    /// open already re-syncs them (see [`crate::keyring::Keyring::resync_copies`]).
    fn check_keyring(&mut self, before: [Result<Vec<u8>, String>; 2]) {
        let dir = self.vol.keyring_fd();
        let kr = self.vol.keyring().read().clone();
        let copies: Vec<(&str, KeyringCopy)> = [KEYRING_FILE, KEYRING_BACKUP]
            .into_iter()
            .zip(before)
            .map(|(n, b)| {
                let r =
                    b.and_then(|b| kr.check_copy(&b).map(|g| (b, g)).map_err(|e| e.to_string()));
                (n, r)
            })
            .collect();
        // The copy in use: the one the volume was opened with.
        let good = copies
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .find(|(_, g)| *g == kr.generation())
            .cloned();
        for (name, r) in &copies {
            let msg = match r {
                Ok((_, g)) if *g == kr.generation() => continue,
                Ok((_, g)) => format!(
                    "keyring copy is stale (generation {g}, the copy in use has {})",
                    kr.generation()
                ),
                Err(e) => format!("keyring copy unusable: {e}"),
            };
            let i = self.problem(ProblemKind::Keyring, None, Path::new(name), msg);
            if self.salvage {
                let r = match &good {
                    Some((bytes, _)) => match read_copy(dir, name) {
                        // Opening the volume writable already rewrote it.
                        Ok(now) if now == *bytes => Ok(()),
                        _ => sys::write_durably(dir, name, bytes, KEYRING_MODE),
                    },
                    None => Err(io::Error::other("no good copy")),
                };
                self.record_repair(i, r, "rewritten from the good copy");
            }
        }
        let primary = kr.primary();
        for v in kr.versions() {
            let zero = v.key.expose().iter().all(|&b| b == 0);
            let msg = if v.state != KeyState::Destroyed && zero {
                format!("key version {} has no key material", v.version)
            } else if v.version == primary && v.state != KeyState::Enabled {
                format!("primary key version {} is not enabled", v.version)
            } else {
                continue;
            };
            let i = self.problem(ProblemKind::KeyVersion, None, Path::new(KEYRING_FILE), msg);
            self.unrepairable(i, "key material cannot be recovered");
        }
        if !kr.versions().iter().any(|v| v.version == primary) {
            let i = self.problem(
                ProblemKind::KeyVersion,
                None,
                Path::new(KEYRING_FILE),
                format!("primary key version {primary} is missing"),
            );
            self.unrepairable(i, "key material cannot be recovered");
        }
    }
}
