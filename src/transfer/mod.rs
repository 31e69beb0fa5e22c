//! `sealfs import` and `sealfs export`: copy a plain directory tree into a
//! volume, or a volume out to a plain directory tree, without mounting,
//! through [`Vault`](crate::Vault).
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
//! Hard links: a file with several names is copied once, under its first
//! name (in path order), and its other names become hard links of it (in
//! the volume: names in its link table; in a plain tree: `link(2)`). A
//! re-run leaves a name that is already a link of the same file alone.
//! Extended attributes of files and directories are copied: `user.*` and
//! the POSIX ACLs, `security.*` and `trusted.*` as root (symlinks' are
//! not). A volume without the `hard-links` or `xattrs` feature (run
//! `sealfs upgrade`) reports the names and attributes it could not keep.
//!
//! Not copied, and reported: FIFOs, sockets and device nodes; entries that
//! cannot be read; files that changed while they were being read.
//!
//! Layout: this module holds what both directions share (options,
//! progress, the report, the job loop and worker pool, xattrs of plain
//! paths); `import` and `export` each scan their source and say how one
//! entry is made (the `Direction` trait).
//!
//! Owns: the walk, the worker pool, skip and temp-file rules, the report.
//! Must never: log names, contents or keys (paths appear only in the
//! report handed back to the caller).

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::vault::{EntryKind, VaultError};

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
    /// Names made (or found) as hard links of a file copied under its
    /// first name.
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

/// One entry found by a scan (a directory, a regular file or a symlink:
/// scans report other kinds as problems instead).
struct Item {
    rel: PathBuf,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    accessed: SystemTime,
    modified: SystemTime,
    /// Of a file with several names: what they share (device and inode
    /// at the source), so that only the first is copied and the others
    /// become hard links of it.
    link: Option<(u64, u64)>,
}

/// One direction of a transfer: how an entry found by the scan is made at
/// the destination (import: into the volume; export: into a plain tree).
/// The order of the steps is [`run_jobs`]'s.
trait Direction: Sync {
    /// Creates the directory `it` at the destination, or finds it there,
    /// writable for the copy (its real mode comes last): whether it was
    /// made, and how many temp files of an interrupted run it removed.
    fn make_dir(&self, it: &Item) -> Result<(bool, u64), String>;
    /// Copies a regular file (content, owner, mode, times, xattrs).
    fn copy_file(&self, it: &Item, sh: &Shared<'_>, buf: &mut [u8]) -> EntryResult;
    /// Copies a symlink.
    fn copy_symlink(&self, it: &Item, sh: &Shared<'_>) -> EntryResult;
    /// Makes `it` a hard link of `first`, copied before; true if it was
    /// made, false if `it` was already a name of the same file.
    fn link(&self, first: &Item, it: &Item) -> Result<bool, String>;
    /// Owner, mode, times and xattrs of a directory, once it is filled.
    fn finish_dir(&self, it: &Item) -> Result<(), String>;
}

/// The job loop both directions share: directories in tree order (one
/// that cannot be made takes its subtree out of the copy), files and
/// symlinks by `opts.threads` workers, then the other names of files
/// with several as hard links of the first, and last the directories'
/// attributes, deepest first.
fn run_jobs(
    items: &[Item],
    d: &dyn Direction,
    opts: &Options,
    sh: &Shared<'_>,
    report: &mut Report,
) {
    let progress = sh.progress;
    let mut failed_dirs: Vec<PathBuf> = Vec::new();
    let under_failed =
        |rel: &Path, failed: &[PathBuf]| failed.iter().any(|f| rel.starts_with(f) && rel != f);
    for it in items.iter().filter(|i| i.kind == EntryKind::Dir) {
        if under_failed(&it.rel, &failed_dirs) {
            failed_dirs.push(it.rel.clone());
            continue;
        }
        report.directories += 1;
        match d.make_dir(it) {
            Ok((made, leftovers)) => {
                report.directories_created += u64::from(made);
                report.leftovers_removed += leftovers;
            }
            Err(msg) => {
                sh.problem(ProblemKind::Failed, &it.rel, msg);
                failed_dirs.push(it.rel.clone());
            }
        }
    }

    let mut first_names: HashMap<(u64, u64), &Item> = HashMap::new();
    let mut other_names: Vec<(&Item, &Item)> = Vec::new();
    let mut jobs: Vec<&Item> = Vec::new();
    for i in items.iter().filter(|i| i.kind != EntryKind::Dir) {
        if under_failed(&i.rel, &failed_dirs) {
            progress.files_done.fetch_add(1, Relaxed);
            progress.bytes_done.fetch_add(i.size, Relaxed);
            continue;
        }
        if let Some(key) = i.link {
            if let Some(first) = first_names.get(&key) {
                other_names.push((first, i));
                continue;
            }
            first_names.insert(key, i);
        }
        jobs.push(i);
    }
    pool(&jobs, opts.threads, |it, buf| {
        let r = match it.kind {
            EntryKind::File => d.copy_file(it, sh, buf),
            EntryKind::Symlink => d.copy_symlink(it, sh),
            EntryKind::Dir | EntryKind::Other => Ok(()),
        };
        if let Err((kind, msg)) = r {
            sh.problem(kind, &it.rel, msg);
        }
        progress.files_done.fetch_add(1, Relaxed);
    });

    for (first, it) in other_names {
        let r = if sh.has_problem(&first.rel) {
            Err(format!(
                "not linked: its first name {} was not copied",
                first.rel.display()
            ))
        } else {
            d.link(first, it)
        };
        match r {
            Ok(made) => {
                report.hard_linked += 1;
                if !made {
                    sh.files_unchanged.fetch_add(1, Relaxed);
                }
            }
            Err(msg) => sh.problem(ProblemKind::Failed, &it.rel, msg),
        }
        progress.files_done.fetch_add(1, Relaxed);
        progress.bytes_done.fetch_add(it.size, Relaxed);
    }

    for it in items.iter().rev().filter(|i| i.kind == EntryKind::Dir) {
        if failed_dirs.contains(&it.rel) {
            continue;
        }
        if let Err(msg) = d.finish_dir(it) {
            sh.problem(ProblemKind::Failed, &it.rel, msg);
        }
    }
}

/// Whether the extended attribute `name` is copied: `user.*` and the POSIX
/// ACLs always, `security.*` and `trusted.*` when running as root (as
/// `cp -a` and `rsync -X` do); sealfs's own backing names never.
fn copies_xattr(name: &str) -> bool {
    if name.starts_with("user.sealfs.") || name.starts_with("trusted.sealfs.") {
        return false;
    }
    if name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
    {
        return true;
    }
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    root && (name.starts_with("security.") || name.starts_with("trusted."))
}

/// The parent directory of a plain path, opened, and the path's last
/// component: where the `*at`-style xattr calls of [`crate::sys`] look.
fn plain_parent(path: &Path) -> std::io::Result<(std::fs::File, std::ffi::OsString)> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })?;
    Ok((dir, name.to_os_string()))
}

/// The copied extended attributes of a plain file or directory (not
/// following a symlink), as (name, value), sorted by name.
fn plain_xattrs(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    use std::os::fd::AsFd;
    let (dir, name) = plain_parent(path)?;
    let mut out = Vec::new();
    for n in crate::sys::list_xattrs(dir.as_fd(), &name)? {
        let Ok(n) = String::from_utf8(n) else {
            continue;
        };
        if !copies_xattr(&n) {
            continue;
        }
        if let Some(v) = crate::sys::get_xattr(dir.as_fd(), &name, &n)? {
            out.push((n, v));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets extended attributes on a plain file or directory.
fn set_plain_xattrs(path: &Path, attrs: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    if attrs.is_empty() {
        return Ok(());
    }
    let (dir, name) = plain_parent(path)?;
    for (n, v) in attrs {
        crate::sys::set_xattr(dir.as_fd(), &name, n, v, 0)?;
    }
    Ok(())
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

    /// Whether a problem was reported for `rel`.
    fn has_problem(&self, rel: &Path) -> bool {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|p| p.path == rel)
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

/// The outcome of copying one entry: done, or the problem to report.
type EntryResult = Result<(), (ProblemKind, String)>;

/// A failure of one entry, for the report.
fn failed(e: impl std::fmt::Display) -> (ProblemKind, String) {
    (ProblemKind::Failed, e.to_string())
}

mod export;
mod import;

pub use export::export;
pub use import::import;

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
