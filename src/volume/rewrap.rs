//! Re-wrapping headers under the primary version of their key (KMS
//! ReEncrypt), volume-wide or for one key, or moving a subtree to the key
//! assigned to it (`rewrap --path`), mounted or not.
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

/// Where a rewrap moves each header it visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewrapTo {
    /// To the primary version of the key that wraps it now (only headers
    /// of this key, if one is given): after a rotation.
    OwnKey(Option<u32>),
    /// To the primary version of this key, whatever wraps it now: a
    /// subtree moved to its assigned key (`rewrap --path`).
    Key(u32),
}

/// Whether the plaintext path `path` (components joined by `/`, empty for
/// the root) is `under` or below it (`None`: everything is).
fn is_under(path: &[u8], under: Option<&[u8]>) -> bool {
    match under {
        None | Some(b"") => true,
        Some(p) => path == p || (path.starts_with(p) && path.get(p.len()) == Some(&b'/')),
    }
}

impl Volume {
    /// The key a header or directory record `rec` moves to under `to`, or
    /// `None` if it is there already (or is not this rewrap's business).
    pub(crate) fn rewrap_target(&self, rec: &SealedRecord, to: RewrapTo) -> Option<u32> {
        let kr = self.keyring().read();
        let now = rec.slots.iter().flatten().next()?.key_version;
        let key = match to {
            RewrapTo::Key(k) => k,
            RewrapTo::OwnKey(filter) => {
                let own = kr.key_of_version(now).map_or(kr.default_key_id(), |k| k.id);
                if filter.is_some_and(|f| f != own) {
                    return None;
                }
                own
            }
        };
        let primary = kr.primary_of(key)?;
        if rec.slots.iter().flatten().all(|s| s.key_version == primary) {
            return None;
        }
        Some(key)
    }

    /// Re-wraps every file header and directory record not under the primary
    /// key version of its own key (see [`Volume::rewrap_to`]).
    pub fn rewrap_all(&self, progress: &RewrapProgress) -> Result<(), VolumeError> {
        self.rewrap_to(progress, RewrapTo::OwnKey(None), None)
    }

    /// Re-wraps the file headers and directory records at or below the
    /// plaintext path `under` (components joined by `/`; `None` or empty:
    /// the whole volume) as `to` says. Crash-safe per header and resumable
    /// (headers already where they belong are skipped), safe while the
    /// volume is mounted and in use.
    pub fn rewrap_to(
        &self,
        progress: &RewrapProgress,
        to: RewrapTo,
        under: Option<&[u8]>,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        progress.reset();
        progress.running.store(true, Ordering::Release);
        let mut count = 0u64;
        let counted = self.walk(
            &mut |item| {
                if is_under(item.path(), under) {
                    count += 1;
                }
                Ok(())
            },
            &mut |_| {},
        );
        progress.total.store(count, Ordering::Relaxed);
        let result = counted.and_then(|_| {
            self.walk(
                &mut |item| {
                    if !is_under(item.path(), under) {
                        return Ok(());
                    }
                    let _ns = self.namespace().read();
                    let changed = match item {
                        Item::Dir { fd, ctx, .. } => self.rewrap_dir_record(fd, &ctx, to),
                        Item::File {
                            parent, entry, ctx, ..
                        } => self.rewrap_file(parent, entry, &ctx, to),
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
                    if self.rewrap_dir_record(fd, &ctx, RewrapTo::OwnKey(None))? {
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
        to: RewrapTo,
    ) -> Result<bool, VolumeError> {
        let fd = match backing::open_regular(parent, OsStr::new(entry), libc::O_RDWR) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false), // renamed or removed meanwhile
            Err(e) => return Err(e.into()),
        };
        self.rewrap_file_header(&fd, ctx, to)
    }

    fn rewrap_dir_record(
        &self,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
        to: RewrapTo,
    ) -> Result<bool, VolumeError> {
        let buf = read_record_copy(fd, DIR_RECORD)?;
        let rec = SealedRecord::decode(RecordKind::Dir, &buf)?;
        let Some(target) = self.rewrap_target(&rec, to) else {
            return Ok(false);
        };
        let d = self.load_dir(fd, ctx)?;
        let wrapping = self.key_wrapper(target, RecordKind::Dir)?;
        self.finish_rebind_dir_with(fd, &d, ctx, wrapping)?;
        Ok(true)
    }
}
