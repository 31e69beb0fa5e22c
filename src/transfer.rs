//! `sealfs import` and `sealfs export`: copy a plain directory tree into a
//! volume, or a volume out to a plain directory tree, without mounting,
//! through [`Vault`].
//!
//! Both run in three phases: a scan (one thread) that lists the tree and
//! counts files and bytes for the progress display; directories created in
//! tree order; then regular files and symlinks copied by a pool of worker
//! threads; and last, directories get their modes and times, deepest first
//! (writing into a directory changes its mtime, and a read-only directory
//! can only be made so once it is filled).
//!
//! What is kept: content (byte for byte), permission bits (set-ID and
//! sticky bits too), access and modification times (nanoseconds), symlink
//! targets, empty directories; the owner and group when running as root.
//! The top directory's own attributes are not copied. Other entries already
//! at the destination are left alone (nothing is deleted).
//!
//! Safe to re-run: a file is copied to a temp file next to its target and
//! renamed over it once complete and synced, so an interrupted run never
//! leaves half a file under the final name; a re-run skips every file whose
//! destination already has the same size and modification time (and fixes
//! its mode), and removes the temp files an interrupted run left behind.
//!
//! Not copied, and reported: FIFOs, sockets and device nodes; entries that
//! cannot be read; files that changed while they were being read. A file
//! with several hard links is copied once per name (sealfs has no hard
//! links), which the report notes.
//!
//! Owns: the walk, the worker pool, skip and temp-file rules, the report.
//! Must never: log names, contents or keys (paths appear only in the
//! report handed back to the caller).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::vault::{EntryKind, Metadata, Vault, VaultError};

/// Copy buffer per worker.
const BUF: usize = 1 << 20;

/// Name prefix of export's temp files in the destination tree.
pub const EXPORT_TEMP_PREFIX: &str = ".sealfs-export-";

/// Settings of a transfer.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads copying files (at least 1).
    pub threads: usize,
    /// Copy owner and group too (needs root).
    pub preserve_owner: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8),
            // SAFETY: geteuid has no failure mode.
            preserve_owner: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// Live counters of a running transfer, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files and symlinks found by the scan so far.
    pub files_total: AtomicU64,
    /// Files and symlinks done (copied, skipped or failed).
    pub files_done: AtomicU64,
    /// Bytes of regular files found by the scan so far.
    pub bytes_total: AtomicU64,
    /// Bytes done (copied, or skipped as unchanged).
    pub bytes_done: AtomicU64,
    /// Set once the scan is complete (the totals are final).
    pub scanned: AtomicBool,
}

/// What went wrong with one entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A FIFO, socket or device node: not copied.
    Special,
    /// The entry could not be read or written.
    Failed,
    /// The file changed while it was read: not copied (run again).
    Changed,
}

/// One entry that was not transferred.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What happened.
    pub kind: ProblemKind,
    /// The entry, relative to the tree's top.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// The outcome of a transfer (also printed by `--json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Regular files copied.
    pub files_copied: u64,
    /// Bytes of the copied files.
    pub bytes_copied: u64,
    /// Files left alone because the destination already had the same size and mtime.
    pub files_unchanged: u64,
    /// Symlinks created (or replaced).
    pub symlinks: u64,
    /// Symlinks left alone (same target already there).
    pub symlinks_unchanged: u64,
    /// Directories created.
    pub directories_created: u64,
    /// Directories visited in all.
    pub directories: u64,
    /// Files with more than one hard link, copied once per name.
    pub hard_linked: u64,
    /// Temp files of an earlier, interrupted run that were removed.
    pub leftovers_removed: u64,
    /// Entries not transferred.
    pub problems: Vec<Problem>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A transfer that could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The source or destination top is unusable.
    #[error("{0}: {1}")]
    Top(PathBuf, String),
    /// The volume failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry found by a scan.
struct Item {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    accessed: SystemTime,
    modified: SystemTime,
}

struct Shared<'a> {
    progress: &'a Progress,
    problems: Mutex<Vec<Problem>>,
    files_copied: AtomicU64,
    bytes_copied: AtomicU64,
    files_unchanged: AtomicU64,
    symlinks: AtomicU64,
    symlinks_unchanged: AtomicU64,
}

impl<'a> Shared<'a> {
    fn new(progress: &'a Progress) -> Self {
        Shared {
            progress,
            problems: Mutex::new(Vec::new()),
            files_copied: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            files_unchanged: AtomicU64::new(0),
            symlinks: AtomicU64::new(0),
            symlinks_unchanged: AtomicU64::new(0),
        }
    }

    fn problem(&self, kind: ProblemKind, rel: &Path, message: impl Into<String>) {
        let message = message.into();
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Problem {
                kind,
                path: rel.to_path_buf(),
                message,
            });
    }

    fn into_report(self, mut base: Report, started: Instant) -> Report {
        base.files_copied = self.files_copied.into_inner();
        base.bytes_copied = self.bytes_copied.into_inner();
        base.files_unchanged = self.files_unchanged.into_inner();
        base.symlinks = self.symlinks.into_inner();
        base.symlinks_unchanged = self.symlinks_unchanged.into_inner();
        let mut problems = self
            .problems
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        base.problems.extend(problems);
        base.seconds = started.elapsed().as_secs_f64();
        base
    }
}

/// Runs `work` on every item of `jobs` with `threads` workers.
fn pool<T: Sync>(jobs: &[T], threads: usize, work: impl Fn(&T, &mut Vec<u8>) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(jobs.len().max(1)) {
            s.spawn(|| {
                let mut buf = vec![0u8; BUF];
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    work(job, &mut buf);
                }
            });
        }
    });
}

fn same_time(a: SystemTime, b: SystemTime) -> bool {
    a == b
}

// ------------------------------------------------------------------ import

/// Lists the plain tree under `top` (pre-order; `top` itself excluded).
fn scan_plain(top: &Path, sh: &Shared<'_>, report: &mut Report) -> Vec<Item> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = top.join(&rel);
        let mut names: Vec<OsString> = match fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                sh.problem(ProblemKind::Failed, &rel, format!("cannot list: {e}"));
                continue;
            }
        };
        names.sort();
        // Reverse, so the stack pops them in name order.
        for name in names.into_iter().rev() {
            let r = rel.join(&name);
            let md = match fs::symlink_metadata(top.join(&r)) {
                Ok(m) => m,
                Err(e) => {
                    sh.problem(ProblemKind::Failed, &r, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                let what = if ft.is_fifo() {
                    "FIFO"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_block_device() {
                    "block device"
                } else if ft.is_char_device() {
                    "character device"
                } else {
                    "special file"
                };
                sh.problem(
                    ProblemKind::Special,
                    &r,
                    format!(
                        "{what} not imported (import copies regular files, directories and symlinks)"
                    ),
                );
                continue;
            };
            if kind == Kind::File && md.nlink() > 1 {
                report.hard_linked += 1;
            }
            let item = item_of(r.clone(), kind, &md);
            match kind {
                Kind::Dir => {
                    stack.push(r);
                }
                _ => {
                    sh.progress.files_total.fetch_add(1, Relaxed);
                    if kind == Kind::File {
                        sh.progress.bytes_total.fetch_add(item.size, Relaxed);
                    }
                }
            }
            out.push(item);
        }
    }
    // The stack visits directories depth first, but entries were pushed as
    // each directory was listed: sort into a proper pre-order (parents first).
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn item_of(rel: PathBuf, kind: Kind, md: &fs::Metadata) -> Item {
    Item {
        rel,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == Kind::File { md.len() } else { 0 },
        accessed: md.accessed().unwrap_or(UNIX_EPOCH),
        modified: md.modified().unwrap_or(UNIX_EPOCH),
    }
}

/// Copies the plain directory tree `src` into the root of `vault`. See the
/// [module docs](self) for what is kept and how a re-run behaves.
pub fn import(
    src: &Path,
    vault: &Vault,
    opts: &Options,
    progress: &Progress,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    match fs::metadata(src) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(TransferError::Top(
                src.into(),
                "not a directory (import copies a directory tree)".into(),
            ))
        }
        Err(e) => return Err(TransferError::Top(src.into(), e.to_string())),
    }
    let sh = Shared::new(progress);
    let mut report = Report::default();
    let items = scan_plain(src, &sh, &mut report);
    progress.scanned.store(true, Relaxed);

    // Directories, parents first; a directory that cannot be made takes
    // its subtree out of the copy.
    let mut failed_dirs: Vec<PathBuf> = Vec::new();
    let under_failed =
        |rel: &Path, failed: &[PathBuf]| failed.iter().any(|f| rel.starts_with(f) && rel != f);
    report.leftovers_removed += vault.remove_staged_leftovers(Path::new(""))? as u64;
    report.directories += 1;
    for it in items.iter().filter(|i| i.kind == Kind::Dir) {
        if under_failed(&it.rel, &failed_dirs) {
            failed_dirs.push(it.rel.clone());
            continue;
        }
        report.directories += 1;
        let r = match vault.metadata(&it.rel) {
            Ok(m) if m.kind == EntryKind::Dir => Ok(false),
            Ok(_) => Err("exists in the volume and is not a directory".to_string()),
            Err(VaultError::NotFound(_)) => vault
                .create_dir(&it.rel)
                .map(|()| true)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|made| {
            // Writable for the copy; the real mode comes last.
            vault
                .set_permissions(&it.rel, 0o700)
                .map_err(|e| e.to_string())?;
            if !made {
                report.leftovers_removed += vault
                    .remove_staged_leftovers(&it.rel)
                    .map_err(|e| e.to_string())? as u64;
            }
            Ok(made)
        });
        match r {
            Ok(made) => report.directories_created += u64::from(made),
            Err(msg) => {
                sh.problem(ProblemKind::Failed, &it.rel, msg);
                failed_dirs.push(it.rel.clone());
            }
        }
    }

    let jobs: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind != Kind::Dir)
        .filter(|i| {
            if under_failed(&i.rel, &failed_dirs) {
                progress.files_done.fetch_add(1, Relaxed);
                progress.bytes_done.fetch_add(i.size, Relaxed);
                false
            } else {
                true
            }
        })
        .collect();
    pool(&jobs, opts.threads, |it, buf| {
        let r = match it.kind {
            Kind::File => import_file(src, vault, it, opts, &sh, buf),
            Kind::Symlink => import_symlink(src, vault, it, opts, &sh),
            Kind::Dir => Ok(()),
        };
        if let Err((kind, msg)) = r {
            sh.problem(kind, &it.rel, msg);
        }
        progress.files_done.fetch_add(1, Relaxed);
    });

    // Directory attributes, deepest first.
    for it in items.iter().rev().filter(|i| i.kind == Kind::Dir) {
        if failed_dirs.contains(&it.rel) {
            continue;
        }
        let r = (|| {
            if opts.preserve_owner {
                vault.set_owner(&it.rel, Some(it.uid), Some(it.gid))?;
            }
            vault.set_permissions(&it.rel, it.mode)?;
            vault.set_times(&it.rel, it.accessed, it.modified)
        })();
        if let Err(e) = r {
            sh.problem(
                ProblemKind::Failed,
                &it.rel,
                format!("cannot set mode or times: {e}"),
            );
        }
    }
    Ok(sh.into_report(report, started))
}

type EntryResult = Result<(), (ProblemKind, String)>;

fn failed(e: impl std::fmt::Display) -> (ProblemKind, String) {
    (ProblemKind::Failed, e.to_string())
}

fn import_file(
    src: &Path,
    vault: &Vault,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
    buf: &mut [u8],
) -> EntryResult {
    let progress = sh.progress;
    if let Ok(m) = vault.metadata(&it.rel) {
        if m.kind == EntryKind::File && m.size == it.size && same_time(m.modified, it.modified) {
            // Unchanged since the last run; only the mode may differ.
            if m.mode != it.mode {
                vault.set_permissions(&it.rel, it.mode).map_err(failed)?;
            }
            sh.files_unchanged.fetch_add(1, Relaxed);
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Ok(());
        }
        if m.kind == EntryKind::Dir {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed("a directory of this name exists in the volume"));
        }
    }
    let path = src.join(&it.rel);
    // O_NOATIME where allowed (our own files, or root): reading must not
    // change the access time being copied.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
        .open(&path)
        .or_else(|_| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        });
    let mut f = match f {
        Ok(f) => f,
        Err(e) => {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed(format!("cannot open: {e}")));
        }
    };
    let mut w = match vault.create_staged(&it.rel) {
        Ok(w) => w,
        Err(e) => {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed(e));
        }
    };
    let mut copied = 0u64;
    let r: io::Result<()> = (|| loop {
        let n = match f.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        copied += n as u64;
        progress.bytes_done.fetch_add(n as u64, Relaxed);
    })();
    // Whatever happened, the bar accounts for the file's whole size.
    let settle = |progress: &Progress| {
        if copied < it.size {
            progress.bytes_done.fetch_add(it.size - copied, Relaxed);
        }
    };
    if let Err(e) = r {
        settle(progress);
        return Err(failed(format!("copy failed: {e}")));
    }
    let after = f.metadata().map_err(failed)?;
    if after.len() != it.size || after.len() != copied || after.modified().ok() != Some(it.modified)
    {
        settle(progress);
        return Err((
            ProblemKind::Changed,
            "changed while it was read; not imported (run import again)".into(),
        ));
    }
    if opts.preserve_owner {
        w.set_owner(Some(it.uid), Some(it.gid));
    }
    w.set_permissions(it.mode);
    w.set_times(it.accessed, it.modified);
    w.finish().map_err(failed)?;
    sh.files_copied.fetch_add(1, Relaxed);
    sh.bytes_copied.fetch_add(copied, Relaxed);
    Ok(())
}

fn import_symlink(
    src: &Path,
    vault: &Vault,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
) -> EntryResult {
    let target =
        fs::read_link(src.join(&it.rel)).map_err(|e| failed(format!("cannot read: {e}")))?;
    match vault.metadata(&it.rel) {
        Ok(m) if m.kind == EntryKind::Symlink => {
            if vault.read_link(&it.rel).map_err(failed)? == target {
                if !same_time(m.modified, it.modified) {
                    vault
                        .set_times(&it.rel, it.accessed, it.modified)
                        .map_err(failed)?;
                }
                sh.symlinks_unchanged.fetch_add(1, Relaxed);
                return Ok(());
            }
            vault.remove_file(&it.rel).map_err(failed)?;
        }
        Ok(m) if m.kind == EntryKind::Dir => {
            return Err(failed("a directory of this name exists in the volume"))
        }
        Ok(_) => vault.remove_file(&it.rel).map_err(failed)?,
        Err(VaultError::NotFound(_)) => {}
        Err(e) => return Err(failed(e)),
    }
    vault.symlink(&target, &it.rel).map_err(failed)?;
    if opts.preserve_owner {
        vault
            .set_owner(&it.rel, Some(it.uid), Some(it.gid))
            .map_err(failed)?;
    }
    vault
        .set_times(&it.rel, it.accessed, it.modified)
        .map_err(failed)?;
    sh.symlinks.fetch_add(1, Relaxed);
    Ok(())
}

// ------------------------------------------------------------------ export

/// Lists the volume's tree (pre-order; the root excluded).
fn scan_vault(vault: &Vault, sh: &Shared<'_>) -> Result<Vec<Item>, VaultError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut first = true;
    while let Some(rel) = stack.pop() {
        let entries = match vault.list_dir_metadata(&rel) {
            Ok(e) => e,
            // The root must list; below it, a directory that does not is reported.
            Err(e) if first => return Err(e),
            Err(e) => {
                sh.problem(ProblemKind::Failed, &rel, format!("cannot list: {e}"));
                continue;
            }
        };
        first = false;
        for (name, md) in entries.into_iter().rev() {
            let r = rel.join(&name);
            let kind = match md.kind {
                EntryKind::Dir => Kind::Dir,
                EntryKind::File => Kind::File,
                EntryKind::Symlink => Kind::Symlink,
                EntryKind::Other => {
                    sh.problem(
                        ProblemKind::Special,
                        &r,
                        "FIFO, socket or device node not exported (export copies regular files, directories and symlinks)",
                    );
                    continue;
                }
            };
            if kind == Kind::Dir {
                stack.push(r.clone());
            } else {
                sh.progress.files_total.fetch_add(1, Relaxed);
                if kind == Kind::File {
                    sh.progress.bytes_total.fetch_add(md.size, Relaxed);
                }
            }
            out.push(vault_item(r, kind, &md));
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn vault_item(rel: PathBuf, kind: Kind, md: &Metadata) -> Item {
    Item {
        rel,
        kind,
        mode: md.mode,
        uid: md.uid,
        gid: md.gid,
        size: if kind == Kind::File { md.size } else { 0 },
        accessed: md.accessed,
        modified: md.modified,
    }
}

fn remove_export_leftovers(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let s = name.to_string_lossy();
        if s.starts_with(EXPORT_TEMP_PREFIX) && s.ends_with(".tmp") {
            fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{EXPORT_TEMP_PREFIX}{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
}

/// Sets owner, mode and times of a plain file through its open descriptor.
fn apply_plain(f: &File, it: &Item, opts: &Options) -> io::Result<()> {
    if opts.preserve_owner {
        std::os::unix::fs::fchown(f, Some(it.uid), Some(it.gid))?;
    }
    f.set_permissions(fs::Permissions::from_mode(it.mode))?;
    f.set_times(
        fs::FileTimes::new()
            .set_accessed(it.accessed)
            .set_modified(it.modified),
    )
}

/// Sets the times of a path without following a symlink.
fn lutimes(path: &Path, accessed: SystemTime, modified: SystemTime) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ts = |t: SystemTime| -> libc::timespec {
        let (s, n) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                (s, n)
            }
        };
        libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        }
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = [ts(accessed), ts(modified)];
    // SAFETY: valid C string and array of two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies the whole volume `vault` into the plain directory `dst` (created
/// if absent). See the [module docs](self).
pub fn export(
    vault: &Vault,
    dst: &Path,
    opts: &Options,
    progress: &Progress,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(TransferError::Top(dst.into(), "not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dst).map_err(|e| TransferError::Top(dst.into(), e.to_string()))?
        }
        Err(e) => return Err(TransferError::Top(dst.into(), e.to_string())),
    }
    let sh = Shared::new(progress);
    let mut report = Report::default();
    let items = scan_vault(vault, &sh)?;
    progress.scanned.store(true, Relaxed);
    report.leftovers_removed +=
        remove_export_leftovers(dst).map_err(|e| TransferError::Top(dst.into(), e.to_string()))?;
    report.directories += 1;

    let mut failed_dirs: Vec<PathBuf> = Vec::new();
    let under_failed =
        |rel: &Path, failed: &[PathBuf]| failed.iter().any(|f| rel.starts_with(f) && rel != f);
    for it in items.iter().filter(|i| i.kind == Kind::Dir) {
        if under_failed(&it.rel, &failed_dirs) {
            failed_dirs.push(it.rel.clone());
            continue;
        }
        report.directories += 1;
        let p = dst.join(&it.rel);
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => remove_export_leftovers(&p).map(|n| {
                report.leftovers_removed += n;
                false
            }),
            Ok(_) => Err(io::Error::other("exists and is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&p).map(|()| true),
            Err(e) => Err(e),
        }
        .and_then(|made| {
            // Writable for the copy; the real mode comes last.
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).map(|()| made)
        });
        match r {
            Ok(made) => report.directories_created += u64::from(made),
            Err(e) => {
                sh.problem(ProblemKind::Failed, &it.rel, e.to_string());
                failed_dirs.push(it.rel.clone());
            }
        }
    }

    let jobs: Vec<&Item> = items
        .iter()
        .filter(|i| i.kind != Kind::Dir)
        .filter(|i| {
            if under_failed(&i.rel, &failed_dirs) {
                progress.files_done.fetch_add(1, Relaxed);
                progress.bytes_done.fetch_add(i.size, Relaxed);
                false
            } else {
                true
            }
        })
        .collect();
    pool(&jobs, opts.threads, |it, buf| {
        let r = match it.kind {
            Kind::File => export_file(vault, dst, it, opts, &sh, buf),
            Kind::Symlink => export_symlink(vault, dst, it, opts, &sh),
            Kind::Dir => Ok(()),
        };
        if let Err((kind, msg)) = r {
            sh.problem(kind, &it.rel, msg);
        }
        progress.files_done.fetch_add(1, Relaxed);
    });

    for it in items.iter().rev().filter(|i| i.kind == Kind::Dir) {
        if failed_dirs.contains(&it.rel) {
            continue;
        }
        let p = dst.join(&it.rel);
        let r = (|| {
            if opts.preserve_owner {
                std::os::unix::fs::lchown(&p, Some(it.uid), Some(it.gid))?;
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(it.mode))?;
            lutimes(&p, it.accessed, it.modified)
        })();
        if let Err(e) = r {
            sh.problem(
                ProblemKind::Failed,
                &it.rel,
                format!("cannot set mode or times: {e}"),
            );
        }
    }
    Ok(sh.into_report(report, started))
}

fn export_file(
    vault: &Vault,
    dst: &Path,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
    buf: &mut [u8],
) -> EntryResult {
    let progress = sh.progress;
    let path = dst.join(&it.rel);
    if let Ok(m) = fs::symlink_metadata(&path) {
        if m.is_file() && m.len() == it.size && m.modified().ok() == Some(it.modified) {
            if m.mode() & 0o7777 != it.mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(it.mode)).map_err(failed)?;
            }
            sh.files_unchanged.fetch_add(1, Relaxed);
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Ok(());
        }
        if m.is_dir() {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed("a directory of this name exists at the destination"));
        }
    }
    let mut copied = 0u64;
    let r = (|| -> Result<(), String> {
        let mut src = vault
            .open_file(&it.rel)
            .map_err(|e| format!("cannot open in the volume: {e}"))?;
        let parent = path.parent().unwrap_or(dst);
        let temp = parent.join(temp_name());
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        let body = (|| -> Result<(), String> {
            loop {
                let n = match src.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("cannot read from the volume: {e}")),
                };
                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                copied += n as u64;
                progress.bytes_done.fetch_add(n as u64, Relaxed);
            }
            apply_plain(&out, it, opts).map_err(|e| format!("cannot set mode or times: {e}"))?;
            out.sync_all().map_err(|e| e.to_string())?;
            fs::rename(&temp, &path).map_err(|e| e.to_string())
        })();
        if body.is_err() {
            let _ = fs::remove_file(&temp);
        }
        body
    })();
    if copied < it.size {
        progress.bytes_done.fetch_add(it.size - copied, Relaxed);
    }
    r.map_err(failed)?;
    sh.files_copied.fetch_add(1, Relaxed);
    sh.bytes_copied.fetch_add(copied, Relaxed);
    Ok(())
}

fn export_symlink(
    vault: &Vault,
    dst: &Path,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
) -> EntryResult {
    let target = vault.read_link(&it.rel).map_err(failed)?;
    let path = dst.join(&it.rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() && fs::read_link(&path).map_err(failed)? == target => {
            if m.modified().ok() != Some(it.modified) {
                lutimes(&path, it.accessed, it.modified).map_err(failed)?;
            }
            sh.symlinks_unchanged.fetch_add(1, Relaxed);
            return Ok(());
        }
        Ok(m) if m.is_dir() => {
            return Err(failed("a directory of this name exists at the destination"))
        }
        _ => {}
    }
    // A new symlink under a temp name, renamed over whatever is there.
    let temp = path.parent().unwrap_or(dst).join(temp_name());
    let r = (|| {
        std::os::unix::fs::symlink(&target, &temp)?;
        if opts.preserve_owner {
            std::os::unix::fs::lchown(&temp, Some(it.uid), Some(it.gid))?;
        }
        lutimes(&temp, it.accessed, it.modified)?;
        fs::rename(&temp, &path)
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&temp);
        return Err(failed(e));
    }
    sh.symlinks.fetch_add(1, Relaxed);
    Ok(())
}

/// A duration for humans ("3.2 s", "2m05s").
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_runs_every_job_once() {
        let jobs: Vec<u64> = (0..1000).collect();
        let sum = AtomicU64::new(0);
        let count = AtomicU64::new(0);
        pool(&jobs, 3, |j, buf| {
            assert_eq!(buf.len(), BUF);
            sum.fetch_add(*j, Relaxed);
            count.fetch_add(1, Relaxed);
        });
        assert_eq!(count.into_inner(), 1000);
        assert_eq!(sum.into_inner(), 999 * 1000 / 2);
        pool(&Vec::<u64>::new(), 4, |_, _| panic!("no jobs"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(3200)), "3.2 s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(7260)), "2h01m");
    }
}
