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
//! Not copied, and reported: FIFOs, sockets and device nodes; entries that
//! cannot be read; files that changed while they were being read. A file
//! with several hard links is copied once per name (sealfs has no hard
//! links), which the report notes.
//!
//! Layout: this module holds what both directions share (options,
//! progress, the report, the worker pool); `import` and `export` each
//! scan their source and copy.
//!
//! Owns: the walk, the worker pool, skip and temp-file rules, the report.
//! Must never: log names, contents or keys (paths appear only in the
//! report handed back to the caller).

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
