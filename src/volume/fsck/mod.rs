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
//! Owns: what counts as a problem, and the order of every salvage write.
//! Must never: print (the CLI renders the report), or put key material or
//! plaintext content into a problem.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::format::chunk::ChunkCipher;
use crate::format::config::VolumeConfig;
use crate::format::header::{EncryptionContext, HeaderError, RecordKind, SealedRecord};
use crate::format::keyring::{parse_header, KeyState};
use crate::format::layout::{plaintext_size, CHUNK_SIZE};
use crate::format::names::{classify_entry, long_entry_name, EntryClass, NameCipher};
use crate::format::reserved::{
    self, Reserved, CONFIG_FILE, DIR_RECORD, DIR_RECORD_BACKUP, KEYRING_BACKUP, KEYRING_FILE,
};
use crate::keyring::{read_copy, UnlockSecret, KEYRING_MODE};
use crate::sys;
use crate::volume::backing::{self, EntryKind};
use crate::volume::content::{self, ChunkScan, Reseal, SealedFile};
use crate::volume::namespace::{self, RenameEnd, RenameOptions};
use crate::volume::{kdf_config, Directory, Volume, VolumeError};

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

/// The kind of a problem (stable names in the JSON output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// `sealfs.toml` is damaged, missing, or disagrees with the keyring.
    Config,
    /// One keyring copy is missing, damaged or stale.
    Keyring,
    /// A key version in the keyring is unusable (e.g. its key is missing).
    KeyVersion,
    /// One copy of a directory record is missing or damaged, or they disagree.
    DirRecordCopy,
    /// Both copies of a directory record are lost: the names below it are.
    DirRecordLost,
    /// A file header is truncated or damaged (its data key is lost).
    Header,
    /// A header or directory record does not open for its path: moved,
    /// copied or tampered with.
    ContextMismatch,
    /// A header is under a key version that is retired, destroyed or absent.
    KeyUnavailable,
    /// Chunks fail authentication.
    Chunk,
    /// The file was cut at a chunk boundary (its final chunk lacks the last flag).
    Truncated,
    /// A ciphertext tail that no plaintext size maps to (a crash while growing).
    SizeTail,
    /// A symlink target does not decrypt.
    Symlink,
    /// A backing entry no directory record accounts for.
    Orphan,
    /// A leftover temp file of an interrupted write.
    TempFile,
    /// A long-name sidecar without its entry.
    StraySidecar,
    /// Something could not be read.
    Io,
}

/// What salvage did about a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repair {
    /// Checking only.
    NotAttempted,
    /// Repaired (see the action).
    Repaired,
    /// Cannot be repaired (e.g. the key that would open it is gone).
    Unrepairable,
    /// A repair was tried and failed (see the action).
    Failed,
}

/// A plaintext byte range of a file, with the chunks it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteRange {
    /// First chunk index.
    pub first_chunk: u64,
    /// Last chunk index (inclusive).
    pub last_chunk: u64,
    /// First plaintext byte.
    pub start: u64,
    /// One past the last plaintext byte.
    pub end: u64,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Plaintext path in the volume (`/a/b`), where it could be recovered.
    pub path: Option<String>,
    /// Backing path relative to CIPHERDIR.
    pub backing: String,
    /// What is wrong, in words.
    pub message: String,
    /// Affected plaintext ranges (chunk problems).
    pub ranges: Vec<ByteRange>,
    /// What salvage did.
    pub repair: Repair,
    /// How it was repaired, or why not.
    pub action: Option<String>,
}

/// Counts of what was checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckStats {
    /// Directories (root included).
    pub directories: u64,
    /// Regular files.
    pub files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// FIFOs, sockets, devices.
    pub other: u64,
    /// Chunks authenticated.
    pub chunks: u64,
    /// Plaintext bytes of the files checked.
    pub bytes: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// What was checked.
    pub stats: FsckStats,
    /// Whether salvage ran.
    pub salvage: bool,
}

impl FsckReport {
    /// No problem at all.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems were found and every one was repaired.
    pub fn all_repaired(&self) -> bool {
        !self.problems.is_empty() && self.problems.iter().all(|p| p.repair == Repair::Repaired)
    }
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

/// Merges sorted chunk indices into plaintext byte ranges of a file of `size` bytes.
pub fn chunk_ranges(chunks: &[u64], size: u64) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::new();
    for &k in chunks {
        let start = k * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(size.max(start));
        match out.last_mut() {
            Some(r) if r.last_chunk + 1 == k => {
                r.last_chunk = k;
                r.end = end;
            }
            _ => out.push(ByteRange {
                first_chunk: k,
                last_chunk: k,
                start,
                end,
            }),
        }
    }
    out
}

/// Sum of the sizes of every regular backing file (for progress).
fn backing_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        match e.metadata() {
            Ok(md) if md.is_dir() => n += backing_bytes(&e.path()),
            Ok(md) if md.is_file() => n += md.len(),
            _ => {}
        }
    }
    n
}

/// What a copy of a directory record turned out to be.
enum RecordCopy {
    Good(SealedRecord, crate::crypto::SecretKey),
    Missing,
    Bad(VolumeError),
}

/// A backing entry no directory record accounts for.
struct Orphan {
    /// Backing path of its directory, relative to CIPHERDIR.
    parent_rel: PathBuf,
    /// Plaintext path of its directory, if known.
    parent_plain: Option<Vec<u8>>,
    /// Backing entry name.
    entry: String,
    /// The full encoded name, if there is one to try.
    encoded: Option<String>,
    kind: EntryKind,
    why: String,
}

/// Where an orphan went in lost+found: its new plaintext name, and its
/// backing entry and kind if it should be checked there.
type Moved = (Vec<u8>, Option<(String, EntryKind)>);

/// A keyring copy's bytes and generation, or why it is unusable.
type KeyringCopy = Result<(Vec<u8>, u32), String>;

/// A directory seen during the walk, for recognising moved ciphertext.
struct KnownDir {
    id: [u8; 16],
    names: NameCipher,
    path: Vec<u8>,
}

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
    secret: &UnlockSecret,
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
    secret: &UnlockSecret,
    opts: &FsckOptions,
    progress: &FsckProgress,
) -> Result<FsckReport, VolumeError> {
    progress
        .total_bytes
        .store(backing_bytes(cipherdir), Ordering::Relaxed);
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
            (
                VolumeConfig::new(h.volume_id, kdf_config(h.kek, h.salt)),
                true,
            )
        }
        Err(e) => return Err(e),
    };
    let kdf_on_disk = config.kdf.clone();
    let root = sys::open_dir_path(cipherdir)?;
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
            c.settle(
                &mut p,
                vol.store_config(&vol.config()),
                "sealfs.toml rewritten",
            );
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
            c.settle(
                &mut p,
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
            .store(backing_bytes(self.cipherdir()), Ordering::Relaxed);
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
        c.settled(|c| match Volume::read_config(c.vol.cipherdir()) {
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
        c.settled(|c| {
            let now = [KEYRING_FILE, KEYRING_BACKUP]
                .map(|n| read_copy(c.vol.root(), n).map_err(|e| e.to_string()));
            c.check_keyring(now);
        });
        let root_fd = c.root.try_clone()?;
        c.report.stats.directories += 1;
        let root = c.settled(|c| {
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
    fn settled<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> T {
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

    fn settle<E: std::fmt::Display>(&self, p: &mut Problem, r: Result<(), E>, done: &str) {
        match r {
            Ok(()) => {
                p.repair = Repair::Repaired;
                p.action = Some(done.into());
            }
            Err(e) => {
                p.repair = Repair::Failed;
                p.action = Some(format!("repair failed: {e}"));
            }
        }
    }

    fn settle_at<E: std::fmt::Display>(&mut self, i: usize, r: Result<(), E>, done: &str) {
        let mut p = self.report.problems[i].clone();
        self.settle(&mut p, r, done);
        self.report.problems[i] = p;
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
        let dir = self.vol.root();
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
                self.settle_at(i, r, "rewritten from the good copy");
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

    // ------------------------------------------------------------ directories

    fn read_copy(&self, fd: BorrowedFd<'_>, name: &str, ctx: &EncryptionContext<'_>) -> RecordCopy {
        match self.vol.read_dir_record(fd, name, ctx) {
            Ok((rec, key, _)) => RecordCopy::Good(rec, key),
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                RecordCopy::Missing
            }
            Err(e) => RecordCopy::Bad(e),
        }
    }

    /// Checks both copies of a directory's record (restoring a bad one from
    /// the good one when salvaging); returns the unlocked directory.
    fn check_dir_record(
        &mut self,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
        path: &[u8],
        rel: &Path,
    ) -> Option<Directory> {
        let a = self.read_copy(fd, DIR_RECORD, ctx);
        let b = self.read_copy(fd, DIR_RECORD_BACKUP, ctx);
        let describe = |c: &RecordCopy| match c {
            RecordCopy::Good(..) => "good".to_string(),
            RecordCopy::Missing => "missing".to_string(),
            RecordCopy::Bad(e) => e.to_string(),
        };
        let (rec, key, bad): (SealedRecord, _, Vec<&str>) = match (&a, &b) {
            (RecordCopy::Good(ra, ka), RecordCopy::Good(rb, kb)) => {
                if ra.id == rb.id && ka.expose() == kb.expose() {
                    (ra.clone(), ka.clone(), vec![])
                } else {
                    (ra.clone(), ka.clone(), vec![DIR_RECORD_BACKUP])
                }
            }
            (RecordCopy::Good(r, k), _) => (r.clone(), k.clone(), vec![DIR_RECORD_BACKUP]),
            (_, RecordCopy::Good(r, k)) => (r.clone(), k.clone(), vec![DIR_RECORD]),
            _ => {
                // Both copies gone: a leftover temp copy may still open.
                let tmp = [
                    reserved::temp_name(DIR_RECORD),
                    reserved::temp_name(DIR_RECORD_BACKUP),
                ]
                .into_iter()
                .find_map(|n| match self.read_copy(fd, &n, ctx) {
                    RecordCopy::Good(r, k) => Some((r, k)),
                    _ => None,
                });
                let unavailable = [&a, &b].iter().find_map(|c| match c {
                    RecordCopy::Bad(VolumeError::Header(HeaderError::KeyVersionUnavailable(v))) => {
                        Some(*v)
                    }
                    _ => None,
                });
                match (tmp, unavailable) {
                    (Some((r, k)), _) => (r, k, vec![DIR_RECORD, DIR_RECORD_BACKUP]),
                    (None, Some(v)) => {
                        let i = self.problem(
                            ProblemKind::KeyUnavailable,
                            Some(path),
                            rel,
                            format!("directory record is under key version {v}, which is retired, destroyed or absent: its entries were not checked"),
                        );
                        self.unrepairable(
                            i,
                            "re-enable the version ('sealfs ctl untrim') if it still exists",
                        );
                        return None;
                    }
                    (None, None) => {
                        let kind = match (&a, &b) {
                            (
                                RecordCopy::Bad(VolumeError::Header(HeaderError::ContextMismatch)),
                                _,
                            )
                            | (
                                _,
                                RecordCopy::Bad(VolumeError::Header(HeaderError::ContextMismatch)),
                            ) => ProblemKind::ContextMismatch,
                            _ => ProblemKind::DirRecordLost,
                        };
                        let i = self.problem(
                            kind,
                            Some(path),
                            rel,
                            format!(
                                "directory record unusable ({DIR_RECORD}: {}; {DIR_RECORD_BACKUP}: {}): the names below it cannot be decrypted",
                                describe(&a),
                                describe(&b)
                            ),
                        );
                        self.unrepairable(i, "no copy of the directory's key survives");
                        return None;
                    }
                }
            }
        };
        for name in bad {
            let which = if name == DIR_RECORD { &a } else { &b };
            let msg = match which {
                RecordCopy::Good(..) => {
                    format!("{name} disagrees with {DIR_RECORD} (different directory id or key)")
                }
                other => format!("{name}: {}", describe(other)),
            };
            let i = self.problem(ProblemKind::DirRecordCopy, Some(path), &rel.join(name), msg);
            if self.salvage {
                let r = self.vol.replace_dir_record(fd, &[name], &rec);
                self.settle_at(i, r, "restored from the good copy");
            }
        }
        let dir = Directory {
            id: rec.id,
            names: NameCipher::new(&key, rec.id),
            key,
        };
        self.dirs.push(KnownDir {
            id: dir.id,
            names: dir.names.clone(),
            path: path.to_vec(),
        });
        Some(dir)
    }

    fn walk_dir(&mut self, fd: BorrowedFd<'_>, dir: &Directory, path: &[u8], rel: &Path) {
        let mut entries: Vec<(String, u64)> = Vec::new();
        match std::fs::read_dir(sys::proc_path(fd)) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => match e.file_name().into_string() {
                            Ok(n) => entries.push((n, e.ino())),
                            Err(raw) => {
                                let n = raw.to_string_lossy().into_owned();
                                self.problem(
                                    ProblemKind::Orphan,
                                    Some(path),
                                    &rel.join(&n),
                                    "backing name is not UTF-8 (not written by sealfs); left as is",
                                );
                            }
                        },
                        Err(e) => {
                            self.problem(ProblemKind::Io, Some(path), rel, format!("readdir: {e}"));
                        }
                    }
                }
            }
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("readdir: {e}"));
                return;
            }
        }
        entries.sort();
        let at_root = rel.as_os_str().is_empty();
        let names: std::collections::HashSet<String> =
            entries.iter().map(|(n, _)| n.clone()).collect();
        for (entry, _ino) in entries {
            let erel = rel.join(&entry);
            let reserved = reserved::classify(&entry, at_root);
            if reserved == Some(Reserved::Bookkeeping) {
                continue;
            }
            if reserved == Some(Reserved::Temp) {
                if self.live {
                    continue; // a record being replaced right now
                }
                let i = self.problem(
                    ProblemKind::TempFile,
                    Some(path),
                    &erel,
                    "leftover temp file of an interrupted write",
                );
                if self.salvage {
                    let r = sys::unlinkat(fd, OsStr::new(&entry), false);
                    self.settle_at(i, r, "removed");
                }
                continue;
            }
            let encoded = match (reserved, classify_entry(&entry)) {
                (Some(Reserved::Sidecar { owner }), _) => {
                    if !names.contains(owner) && !self.live {
                        let i = self.problem(
                            ProblemKind::StraySidecar,
                            Some(path),
                            &erel,
                            "long-name sidecar without its entry",
                        );
                        if self.salvage {
                            let r = sys::unlinkat(fd, OsStr::new(&entry), false);
                            self.settle_at(i, r, "removed");
                        }
                    }
                    continue;
                }
                (Some(_), _) | (None, EntryClass::Internal) => None,
                (None, EntryClass::Short) => Some(entry.clone()),
                (None, EntryClass::Long) => {
                    let side = reserved::sidecar_name(&entry);
                    match std::fs::read_to_string(sys::proc_path(fd).join(&side)) {
                        Ok(full) if long_entry_name(&full) == entry => Some(full),
                        _ => None,
                    }
                }
            };
            let st = match sys::fstatat(fd, OsStr::new(&entry)) {
                Ok(st) => st,
                Err(e) if self.vanished(&e) => continue,
                Err(e) => {
                    self.problem(ProblemKind::Io, Some(path), &erel, format!("stat: {e}"));
                    continue;
                }
            };
            let kind = EntryKind::of_mode(st.st_mode);
            let name = match encoded.as_deref().map(|e| dir.names.decrypt_name(e)) {
                Some(Ok(n)) => n,
                other => {
                    let why = match (&other, classify_entry(&entry)) {
                        (_, EntryClass::Internal) => "unknown file in the cipher directory".into(),
                        (None, _) => "long name whose sidecar is missing or does not match".into(),
                        (Some(Err(e)), _) => {
                            format!("name does not decrypt in this directory ({e})")
                        }
                        (Some(Ok(_)), _) => unreachable!(),
                    };
                    self.orphans.push(Orphan {
                        parent_rel: rel.to_path_buf(),
                        parent_plain: Some(path.to_vec()),
                        entry,
                        encoded,
                        kind,
                        why,
                    });
                    continue;
                }
            };
            let ctx = EncryptionContext {
                parent_dir_id: dir.id,
                name: &name,
            };
            let cpath = join(path, &name);
            self.check_entry(fd, &entry, kind, &ctx, &cpath, &erel);
        }
    }

    fn check_entry(
        &mut self,
        parent: BorrowedFd<'_>,
        entry: &str,
        kind: EntryKind,
        ctx: &EncryptionContext<'_>,
        path: &[u8],
        rel: &Path,
    ) {
        match kind {
            EntryKind::Dir => {
                self.report.stats.directories += 1;
                let child = match sys::openat(
                    parent,
                    OsStr::new(entry),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                ) {
                    Ok(c) => c,
                    Err(e) if self.vanished(&e) => return,
                    Err(e) => {
                        self.problem(ProblemKind::Io, Some(path), rel, format!("open: {e}"));
                        return;
                    }
                };
                let half_made = empty_without_records(child.as_fd()).filter(|tmps| {
                    // A temp copy that opens restores the record instead.
                    !tmps.iter().any(|t| {
                        matches!(self.read_copy(child.as_fd(), t, ctx), RecordCopy::Good(..))
                    })
                });
                if half_made.is_some() && self.live {
                    return; // being made or removed right now
                }
                if let Some(tmps) = half_made {
                    // Half made or half removed (a crash inside mkdir or
                    // rmdir): nothing below it can be lost.
                    let i = self.problem(
                        ProblemKind::DirRecordLost,
                        Some(path),
                        rel,
                        "empty directory without its record (a crash during mkdir or rmdir)",
                    );
                    if self.salvage {
                        drop(child);
                        let r = namespace::remove_half_made_dir(
                            parent,
                            &namespace::existing_entry(entry, None),
                            &tmps,
                        );
                        self.settle_at(i, r, "removed (it held nothing)");
                    }
                    return;
                }
                let d = self.settled(|c| {
                    let _ns = c.vol.namespace().read_recursive();
                    c.check_dir_record(child.as_fd(), ctx, path, rel)
                });
                if let Some(d) = d {
                    self.walk_dir(child.as_fd(), &d, path, rel);
                }
            }
            EntryKind::File => {
                self.report.stats.files += 1;
                self.settled(|c| {
                    let _ns = c.vol.namespace().read_recursive();
                    c.check_file(parent, entry, ctx, path, rel)
                });
            }
            EntryKind::Symlink => {
                self.report.stats.symlinks += 1;
                let target = sys::readlinkat(parent, OsStr::new(entry));
                if matches!(&target, Err(e) if self.vanished(e)) {
                    return;
                }
                let ok = match (&target, &self.root_dir) {
                    (Ok(t), Some(root)) => root.names.open_symlink_target(t).is_ok(),
                    (Ok(_), None) => true, // root key unknown: nothing to check against
                    (Err(_), _) => false,
                };
                if !ok {
                    let i = self.problem(
                        ProblemKind::Symlink,
                        Some(path),
                        rel,
                        "symlink target does not decrypt (tampered)",
                    );
                    self.unrepairable(
                        i,
                        "the target cannot be recovered; remove or recreate the link",
                    );
                }
            }
            EntryKind::Other => self.report.stats.other += 1,
        }
    }

    // ------------------------------------------------------------ files

    fn check_file(
        &mut self,
        parent: BorrowedFd<'_>,
        entry: &str,
        ctx: &EncryptionContext<'_>,
        path: &[u8],
        rel: &Path,
    ) {
        let file = match sys::open_regular(parent, OsStr::new(entry), libc::O_RDONLY) {
            Ok(f) => f,
            Err(e) if self.vanished(&e) => return,
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("open: {e}"));
                return;
            }
        };
        let csize = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("stat: {e}"));
                return;
            }
        };
        let done = |c: &Self| {
            c.progress.done_bytes.fetch_add(csize, Ordering::Relaxed);
        };
        let Ok(size) = plaintext_size(csize) else {
            let i = self.problem(
                ProblemKind::Header,
                Some(path),
                rel,
                format!("file truncated inside its header block ({csize} bytes): its key is lost"),
            );
            self.unrepairable(i, "the file's data key is lost");
            return done(self);
        };
        let opened = content::read_header(&file)
            .and_then(|header| self.vol.open_record(RecordKind::File, &header, ctx));
        let (rec, key) = match opened {
            Ok((rec, key, _)) => (rec, key),
            Err(e) => {
                let (kind, why) = match &e {
                    VolumeError::Header(HeaderError::ContextMismatch) => (
                        ProblemKind::ContextMismatch,
                        "the file's key is bound to another path (moved, copied or tampered)",
                    ),
                    VolumeError::Header(HeaderError::KeyVersionUnavailable(_)) => (
                        ProblemKind::KeyUnavailable,
                        "re-enable the version ('sealfs ctl untrim') if it still exists",
                    ),
                    _ => (ProblemKind::Header, "the file's data key is lost"),
                };
                let i = self.problem(kind, Some(path), rel, format!("header: {e}"));
                self.unrepairable(i, why);
                return done(self);
            }
        };
        let sealed = SealedFile::new(file, ChunkCipher::new(&key, rec.id), size);
        let ChunkScan { bad, cut, checked } = sealed.scan();
        self.report.stats.chunks += checked;
        self.report.stats.bytes += size;
        let mut fixes: Vec<(u64, Reseal)> = Vec::new();
        let mut fixed_by_rewrite: Vec<(usize, &str)> = Vec::new();
        if !bad.is_empty() {
            let ranges = chunk_ranges(&bad, size);
            let desc: Vec<String> = ranges
                .iter()
                .map(|r| {
                    format!(
                        "bytes {}..{} (chunks {}-{})",
                        r.start, r.end, r.first_chunk, r.last_chunk
                    )
                })
                .collect();
            let i = self.problem(
                ProblemKind::Chunk,
                Some(path),
                rel,
                format!(
                    "{} chunk(s) fail authentication: {}",
                    bad.len(),
                    desc.join(", ")
                ),
            );
            self.report.problems[i].ranges = ranges;
            fixes.extend(bad.iter().map(|&k| (k, Reseal::Zeros)));
            fixed_by_rewrite.push((i, "bad chunks replaced by zeros"));
        }
        if let Some(k) = cut {
            let i = self.problem(
                ProblemKind::Truncated,
                Some(path),
                rel,
                format!("file was cut after chunk {k} (at byte {size}): what followed is lost"),
            );
            self.report.problems[i].ranges = chunk_ranges(&[k], size);
            fixes.push((k, Reseal::KeepContent));
            fixed_by_rewrite.push((i, "final chunk re-sealed as final (content kept)"));
        }
        if self.salvage && !fixes.is_empty() {
            let r = sealed
                .reopen_writable()
                .map_err(VolumeError::from)
                .and_then(|w| w.reseal(&fixes))
                .map_err(|e| e.to_string());
            for (i, what) in fixed_by_rewrite {
                self.settle_at(i, r.clone(), what);
            }
        }
        let tail = sealed.stray_tail(csize);
        if tail > 0 {
            let i = self.problem(
                ProblemKind::SizeTail,
                Some(path),
                rel,
                format!(
                    "{tail} stray ciphertext bytes after the last chunk (a crash while the file grew)"
                ),
            );
            if self.salvage {
                let r = sealed.reopen_writable().and_then(|w| w.trim_stray_tail());
                self.settle_at(i, r, "trimmed to the last chunk");
            }
        }
        done(self);
    }

    // ------------------------------------------------------------ orphans

    fn lost_found(&mut self) -> Result<(BorrowedFd<'_>, &Directory), VolumeError> {
        if self.lost_found.is_none() {
            let root = self.root_dir.clone().ok_or(VolumeError::DirRecordLost)?;
            let rfd = self.root.as_fd();
            let name = LOST_FOUND.as_bytes();
            let bn = root.names.encrypt_name(name)?;
            let ctx = EncryptionContext {
                parent_dir_id: root.id,
                name,
            };
            let (fd, dir) = match backing::open_dir(rfd, OsStr::new(&bn.entry)) {
                Ok(fd) => {
                    let d = self.vol.load_dir(fd.as_fd(), &ctx)?;
                    (fd, d)
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    namespace::create_dir(rfd, &bn, 0o700)?.finish_dir_durably(self.vol, &ctx)?
                }
                Err(e) => return Err(e.into()),
            };
            self.dirs.push(KnownDir {
                id: dir.id,
                names: dir.names.clone(),
                path: name.to_vec(),
            });
            self.lost_found = Some((fd, dir));
        }
        let (fd, dir) = self.lost_found.as_ref().expect("set above");
        Ok((fd.as_fd(), dir))
    }

    /// A free name in lost+found based on `want`, with its backing name.
    fn free_name(
        &mut self,
        want: &[u8],
    ) -> Result<(Vec<u8>, crate::format::names::BackingName), VolumeError> {
        let (fd, dir) = self.lost_found()?;
        let base: Vec<u8> = want.iter().copied().take(200).collect();
        for n in 0u32.. {
            let mut name = base.clone();
            if n > 0 {
                name.extend_from_slice(format!("~{n}").as_bytes());
            }
            let bn = dir.names.encrypt_name(&name)?;
            match sys::fstatat(fd, OsStr::new(&bn.entry)) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((name, bn)),
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        unreachable!("u32 names run out")
    }

    fn handle_orphans(&mut self) {
        // Checking a recognised orphan directory may find more orphans.
        while !self.orphans.is_empty() {
            let batch = std::mem::take(&mut self.orphans);
            for o in batch {
                self.handle_orphan(o);
            }
        }
    }

    fn handle_orphan(&mut self, o: Orphan) {
        {
            let rel = o.parent_rel.join(&o.entry);
            // Which directory's name key does the name decrypt under?
            let found = o.encoded.as_deref().and_then(|enc| {
                self.dirs.iter().find_map(|d| {
                    d.names
                        .decrypt_name(enc)
                        .ok()
                        .map(|n| (d.id, d.path.clone(), n))
                })
            });
            let parent = match sys::openat(
                self.root.as_fd(),
                if o.parent_rel.as_os_str().is_empty() {
                    OsStr::new(".")
                } else {
                    o.parent_rel.as_os_str()
                },
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    self.problem(ProblemKind::Io, None, &o.parent_rel, format!("open: {e}"));
                    return;
                }
            };
            let (orig_path, opens) = match &found {
                Some((id, dpath, name)) => {
                    let ctx = EncryptionContext {
                        parent_dir_id: *id,
                        name,
                    };
                    let opens = self.orphan_opens(parent.as_fd(), &o, &ctx);
                    (Some(join(dpath, name)), opens)
                }
                None => (None, false),
            };
            let mut msg = match &o.parent_plain {
                Some(p) if orig_path.is_none() => format!("in directory {}: {}", plain(p), o.why),
                _ => o.why.clone(),
            };
            if let Some(p) = &orig_path {
                msg.push_str(&format!(
                    "; it is the ciphertext of {}{}",
                    plain(p),
                    if opens {
                        ""
                    } else {
                        " (but its key does not open there)"
                    }
                ));
            }
            let i = self.problem(ProblemKind::Orphan, orig_path.as_deref(), &rel, msg);
            if !self.salvage {
                // Check what can be checked where it lies.
                if let (Some((id, _, name)), true) = (&found, opens) {
                    let ctx = EncryptionContext {
                        parent_dir_id: *id,
                        name,
                    };
                    let p = orig_path.clone().unwrap_or_default();
                    self.check_entry(parent.as_fd(), &o.entry, o.kind, &ctx, &p, &rel);
                }
                return;
            }
            let r = match (&found, opens) {
                (Some((id, _, name)), true) => {
                    let old = EncryptionContext {
                        parent_dir_id: *id,
                        name,
                    };
                    self.move_recognised(parent.as_fd(), &o, &old, name)
                }
                _ if o.kind == EntryKind::File => self.copy_raw(parent.as_fd(), &o),
                _ if o.kind == EntryKind::Dir => {
                    self.unrepairable(
                        i,
                        "a directory whose record does not open: its names are lost; left in place",
                    );
                    return;
                }
                _ => self.move_keyless(parent.as_fd(), &o),
            };
            match r {
                Ok((dest, then_check)) => {
                    let msg = format!("moved to /{LOST_FOUND}/{}", String::from_utf8_lossy(&dest));
                    self.settle_at(i, Ok::<(), VolumeError>(()), &msg);
                    if let Some((entry, kind)) = then_check {
                        self.check_moved(&dest, &entry, kind);
                    }
                }
                Err(e) => self.settle_at(i, Err(e), ""),
            }
        }
    }

    /// Whether an orphan's header or record opens for `ctx`.
    fn orphan_opens(
        &self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
        ctx: &EncryptionContext<'_>,
    ) -> bool {
        match o.kind {
            EntryKind::File => sys::open_regular(parent, OsStr::new(&o.entry), libc::O_RDONLY)
                .ok()
                .is_some_and(|f| {
                    content::read_header(&f)
                        .and_then(|header| self.vol.open_record(RecordKind::File, &header, ctx))
                        .is_ok()
                }),
            EntryKind::Dir => sys::openat(
                parent,
                OsStr::new(&o.entry),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .ok()
            .is_some_and(|fd| self.vol.load_dir(fd.as_fd(), ctx).is_ok()),
            EntryKind::Symlink | EntryKind::Other => true,
        }
    }

    /// Moves a recognised orphan into lost+found under its own name,
    /// re-binding its key (the rename of docs/FORMAT.md §6, made durable).
    /// Returns its new name, and its backing entry and kind to check there.
    fn move_recognised(
        &mut self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
        old: &EncryptionContext<'_>,
        name: &[u8],
    ) -> Result<Moved, VolumeError> {
        self.move_to_lost_found(parent, o, Some(old), name)
    }

    /// Moves a symlink or special file (no key) into lost+found as `orphan-…`.
    fn move_keyless(&mut self, parent: BorrowedFd<'_>, o: &Orphan) -> Result<Moved, VolumeError> {
        let want = format!("orphan-{}", short(&o.entry));
        self.move_to_lost_found(parent, o, None, want.as_bytes())
    }

    /// Renames the orphan `o` of `parent` into lost+found, under a free
    /// name based on `want`; `old` is the context its key opens under
    /// (`None` for a keyless node).
    fn move_to_lost_found(
        &mut self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
        old: Option<&EncryptionContext<'_>>,
        want: &[u8],
    ) -> Result<Moved, VolumeError> {
        let (new_name, bn) = self.free_name(want)?;
        let vol = self.vol;
        let (lf, dir) = self.lost_found()?;
        let new = EncryptionContext {
            parent_dir_id: dir.id,
            name: &new_name,
        };
        let src = namespace::existing_entry(&o.entry, o.encoded.as_deref());
        namespace::rename(
            vol,
            RenameEnd {
                dir: parent,
                name: &src,
                // A keyless node has no key to re-bind.
                ctx: old.unwrap_or(&new),
            },
            RenameEnd {
                dir: lf,
                name: &bn,
                ctx: &new,
            },
            RenameOptions {
                same_dir: false,
                noreplace: true,
                durable: true,
            },
        )?;
        Ok((new_name, Some((bn.entry, o.kind))))
    }

    /// Stores an unrecognised file's raw bytes as a new sealfs file
    /// `raw-…` in lost+found (staged under a temp name, synced, renamed in
    /// place, fsync), then removes the orphan.
    fn copy_raw(&mut self, parent: BorrowedFd<'_>, o: &Orphan) -> Result<Moved, VolumeError> {
        let src = backing::open_regular(parent, OsStr::new(&o.entry), libc::O_RDONLY)?;
        let want = format!("raw-{}", short(&o.entry));
        let (new_name, bn) = self.free_name(want.as_bytes())?;
        let vol = self.vol;
        let (lf, dir) = self.lost_found()?;
        let ctx = EncryptionContext {
            parent_dir_id: dir.id,
            name: &new_name,
        };
        let tmp = reserved::salvage_name(std::process::id());
        sys::remove_stale_regular(lf, OsStr::new(&tmp))?;
        let mut sealed = namespace::create_staged(vol, lf, &tmp, &ctx, 0o600)?;
        let result = (|| {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let n = std::os::unix::fs::FileExt::read_at(&src, &mut buf, off)?;
                if n == 0 {
                    break;
                }
                sealed.write(off, &buf[..n])?;
                off += n as u64;
            }
            sealed.backing().sync_all()?;
            namespace::commit_staged(lf, &tmp, &bn, true)?;
            backing::sync_dir(lf)?;
            let orphan = namespace::existing_entry(&o.entry, o.encoded.as_deref());
            namespace::unlink(parent, &orphan)?;
            backing::sync_dir(parent)?;
            Ok::<_, VolumeError>(())
        })();
        if result.is_err() {
            namespace::discard_staged(lf, &tmp);
        }
        result?;
        Ok((new_name, None))
    }

    /// Checks (and salvages) an entry just moved into lost+found.
    fn check_moved(&mut self, name: &[u8], entry: &str, kind: EntryKind) {
        let Ok((lf, dir)) = self.lost_found() else {
            return;
        };
        let (Ok(lf), id) = (
            sys::openat(lf, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY, 0),
            dir.id,
        ) else {
            return;
        };
        let ctx = EncryptionContext {
            parent_dir_id: id,
            name,
        };
        let path = join(LOST_FOUND.as_bytes(), name);
        let rel = lost_found_rel(self, entry);
        self.check_entry(lf.as_fd(), entry, kind, &ctx, &path, &rel);
    }
}

fn lost_found_rel(c: &Checker<'_>, entry: &str) -> PathBuf {
    let lf_entry = c
        .root_dir
        .as_ref()
        .and_then(|r| r.names.encrypt_name(LOST_FOUND.as_bytes()).ok())
        .map(|b| b.entry)
        .unwrap_or_else(|| LOST_FOUND.into());
    Path::new(&lf_entry).join(entry)
}

/// If the backing directory `fd` has neither record copy and holds nothing
/// but temp files, those temp files' names.
fn empty_without_records(fd: BorrowedFd<'_>) -> Option<Vec<String>> {
    let mut tmps = Vec::new();
    for e in std::fs::read_dir(sys::proc_path(fd)).ok()? {
        let n = e.ok()?.file_name().into_string().ok()?;
        if reserved::classify(&n, false) == Some(Reserved::Temp) {
            tmps.push(n);
        } else {
            return None;
        }
    }
    Some(tmps)
}

/// A short, name-safe tag for an orphan's backing name.
fn short(entry: &str) -> String {
    entry
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_clip() {
        let r = chunk_ranges(&[0, 1, 3], 3 * 4096 + 10);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].start, r[0].end, r[0].first_chunk, r[0].last_chunk),
            (0, 8192, 0, 1)
        );
        assert_eq!((r[1].start, r[1].end), (3 * 4096, 3 * 4096 + 10));
        assert!(chunk_ranges(&[], 100).is_empty());
    }

    #[test]
    fn report_states() {
        let mut r = FsckReport::default();
        assert!(r.is_clean() && !r.all_repaired());
        r.problems.push(Problem {
            kind: ProblemKind::Chunk,
            path: None,
            backing: ".".into(),
            message: String::new(),
            ranges: vec![],
            repair: Repair::Repaired,
            action: None,
        });
        assert!(!r.is_clean() && r.all_repaired());
        r.problems[0].repair = Repair::Failed;
        assert!(!r.all_repaired());
    }
}
