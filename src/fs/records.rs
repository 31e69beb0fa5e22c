//! Durability of the directory records of new directories, which are
//! written without a sync (an fdatasync per mkdir cost more than the rest
//! of `tar x`): made durable before any fsync below them, by a flusher
//! every [`RECORD_FLUSH_INTERVAL`], and at unmount.
//!
//! Owns: which records are pending, and the flusher thread.
//! Must never: let a record be less durable than a child someone asked to
//! be durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::volume::{Volume, VolumeError};

use crate::fs::inodes::Inode;
use crate::fs::{errno_of, FsResult, SealFs};

/// Directory records of new directories are written without a sync (an
/// fdatasync per mkdir cost more than the rest of `tar x`). They are made
/// durable before any fsync below them, by a flusher every
/// [`RECORD_FLUSH_INTERVAL`], and at unmount, so a record is never less
/// durable than a child someone asked to be durable.
pub(super) struct RecordFlusher {
    pub(super) vol: Arc<Volume>,
    pub(super) pending: Mutex<Vec<Arc<Inode>>>,
}

pub(super) const RECORD_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

impl RecordFlusher {
    pub(super) fn persist(&self, inode: &Inode) -> FsResult<()> {
        if inode.record_pending.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.vol.persist_dir_record(match inode.dir_fd() {
                Ok(fd) => fd,
                Err(_) => return Ok(()),
            }) {
                if matches!(&e, VolumeError::Io(io) if io.kind() == std::io::ErrorKind::NotFound) {
                    return Ok(()); // removed meanwhile
                }
                inode.record_pending.store(true, Ordering::Release);
                tracing::warn!(ino = inode.ino, "cannot sync directory record: {e}");
                return Err(errno_of(&e));
            }
        }
        Ok(())
    }

    pub(super) fn flush_all(&self) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for i in pending {
            if self.persist(&i).is_err() {
                self.pending.lock().push(i);
            }
        }
    }

    pub(super) fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("sealfs-records".into())
            .spawn(move || loop {
                std::thread::sleep(RECORD_FLUSH_INTERVAL);
                match weak.upgrade() {
                    Some(f) => f.flush_all(),
                    None => return,
                }
            });
    }
}

impl SealFs {
    /// Makes the records of `inode` (if a directory) and of all its ancestors
    /// durable: called before an fsync below them.
    pub(super) fn persist_records(&self, inode: &Arc<Inode>) -> FsResult<()> {
        let mut cur = Some(inode.clone());
        while let Some(i) = cur {
            self.records.persist(&i)?;
            cur = i.loc.lock().parent.clone();
        }
        Ok(())
    }
}
