//! Re-wrapping every header under the primary key version (KMS
//! ReEncrypt), volume-wide, mounted or not.
//!
//! Owns: the order and crash safety of re-wrapping (per header: add the new
//! slot durably, then drop the old one, see `Volume::rewrap_file_header`;
//! directory records are replaced atomically, docs/FORMAT.md §6.1), and its
//! progress counters. A file with several names is visited once per name;
//! after the first visit its header is under the primary and is skipped.
//! Must never: re-encrypt content, or hold the namespace lock across more
//! than one entry (renames and creates go on while a rewrap runs).

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::format::header::{EncryptionContext, RecordKind, SealedRecord};
use crate::format::reserved::DIR_RECORD;
use crate::volume::backing;
use crate::volume::walk::Item;
use crate::volume::{read_record_copy, Volume, VolumeError};

/// Progress of a rewrap, shared with whoever reports it.
#[derive(Debug, Default)]
pub struct RewrapProgress {
    /// A rewrap is running.
    pub running: AtomicBool,
    /// Headers and directory records to visit (known after the counting pass).
    pub total: AtomicU64,
    /// Visited so far.
    pub done: AtomicU64,
    /// Of those, re-wrapped to the primary version.
    pub rewrapped: AtomicU64,
    /// Of those, that could not be opened or written (left as they were).
    pub failed: AtomicU64,
}

/// Snapshot of [`RewrapProgress`].
#[derive(Debug, Clone, Serialize)]
pub struct RewrapReport {
    /// Running?
    pub running: bool,
    /// Headers and records to visit.
    pub total: u64,
    /// Visited.
    pub done: u64,
    /// Re-wrapped.
    pub rewrapped: u64,
    /// Failed.
    pub failed: u64,
}

impl RewrapProgress {
    /// Zeroes the counters (before a new run reports anything).
    pub fn reset(&self) {
        for c in [&self.total, &self.done, &self.rewrapped, &self.failed] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// A consistent-enough snapshot for display.
    pub fn report(&self) -> RewrapReport {
        RewrapReport {
            running: self.running.load(Ordering::Acquire),
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            rewrapped: self.rewrapped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl Volume {
    /// Re-wraps every file header and directory record not under the primary
    /// key version. Crash-safe per header and resumable (already re-wrapped
    /// headers are skipped), safe while the volume is mounted and in use.
    pub fn rewrap_all(&self, progress: &RewrapProgress) -> Result<(), VolumeError> {
        self.check_writable()?;
        progress.reset();
        progress.running.store(true, Ordering::Release);
        let mut count = 0u64;
        let counted = self.walk(
            &mut |_| {
                count += 1;
                Ok(())
            },
            &mut |_| {},
        );
        progress.total.store(count, Ordering::Relaxed);
        let result = counted.and_then(|_| {
            self.walk(
                &mut |item| {
                    let _ns = self.namespace().read();
                    let changed = match item {
                        Item::Dir { fd, ctx, .. } => self.rewrap_dir_record(fd, &ctx),
                        Item::File {
                            parent, entry, ctx, ..
                        } => self.rewrap_file(parent, entry, &ctx),
                    };
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    if changed? {
                        progress.rewrapped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                },
                &mut |e| {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("rewrap: entry left as it was: {e}");
                },
            )
        });
        progress.running.store(false, Ordering::Release);
        result
    }

    /// Re-wraps every directory record (root included) not under the
    /// primary version, and only those: the namespace must stay reachable
    /// before an old version is retired. Returns (re-wrapped, failed).
    pub fn rewrap_dir_records(&self) -> Result<(u64, u64), VolumeError> {
        self.check_writable()?;
        let (mut rewrapped, mut failed) = (0u64, 0u64);
        self.walk(
            &mut |item| {
                if let Item::Dir { fd, ctx, .. } = item {
                    let _ns = self.namespace().read();
                    if self.rewrap_dir_record(fd, &ctx)? {
                        rewrapped += 1;
                    }
                }
                Ok(())
            },
            &mut |e| {
                failed += 1;
                tracing::warn!("rewrap of a directory record failed: {e}");
            },
        )?;
        Ok((rewrapped, failed))
    }

    fn rewrap_file(
        &self,
        parent: BorrowedFd<'_>,
        entry: &str,
        ctx: &EncryptionContext<'_>,
    ) -> Result<bool, VolumeError> {
        let fd = match backing::open_regular(parent, OsStr::new(entry), libc::O_RDWR) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false), // renamed or removed meanwhile
            Err(e) => return Err(e.into()),
        };
        self.rewrap_file_header(&fd, ctx)
    }

    fn rewrap_dir_record(
        &self,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
    ) -> Result<bool, VolumeError> {
        let primary = self.keyring().read().primary();
        let buf = read_record_copy(fd, DIR_RECORD)?;
        let rec = SealedRecord::decode(RecordKind::Dir, &buf)?;
        if rec.slots.iter().flatten().all(|s| s.key_version == primary) {
            return Ok(false);
        }
        let d = self.load_dir(fd, ctx)?;
        self.finish_rebind_dir(fd, &d, ctx)?;
        Ok(true)
    }
}
