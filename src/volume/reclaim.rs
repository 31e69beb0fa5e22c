//! Reclaiming the space of backing files whose last name was removed, off
//! the request path.
//!
//! Owns: one background thread that closes the last fd of a backing file
//! after an unlink or a replacing rename removed its name, so the backing
//! filesystem frees the file's blocks off the request path. Freeing is the
//! slow part of an unlink: on ext4 mounted with `discard` (and no journal)
//! every freed extent is a synchronous discard, ~0.2 ms for a small file,
//! and a large file takes longer; the caller (and the namespace lock it
//! holds) no longer waits for it.
//!
//! Must never: hold a file that still has a name (callers hand over fds
//! only after the unlink or rename succeeded), let the backlog grow without
//! bound (beyond [`MAX_PENDING_FILES`] files or [`MAX_PENDING_BYTES`] bytes
//! the caller's fd is closed inline, as before), or keep freed space
//! invisible to `statfs` (the frontend calls [`ReclaimQueue::drain`] first).

use std::os::fd::OwnedFd;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Most files waiting to be freed at once.
pub const MAX_PENDING_FILES: u64 = 1024;
/// Most bytes (allocated blocks) waiting to be freed at once.
pub const MAX_PENDING_BYTES: u64 = 64 << 20;

#[derive(Default)]
struct Backlog {
    files: u64,
    bytes: u64,
}

struct Shared {
    backlog: Mutex<Backlog>,
    emptied: Condvar,
}

/// A removed file on its way to the closing thread.
struct Pending {
    fd: OwnedFd,
    bytes: u64,
}

/// Closes unlinked backing files in the background (see the module docs).
pub struct ReclaimQueue {
    shared: Arc<Shared>,
    tx: Mutex<Option<SyncSender<Pending>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Default for ReclaimQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl ReclaimQueue {
    /// Starts the closing thread. If it cannot be started, every reclaim
    /// is done inline.
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog::default()),
            emptied: Condvar::new(),
        });
        let (tx, rx) = sync_channel::<Pending>(MAX_PENDING_FILES as usize);
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name("sealfs-reclaim".into())
            .spawn(move || {
                for p in rx {
                    drop(p.fd);
                    let mut b = s.backlog.lock().unwrap_or_else(|e| e.into_inner());
                    b.files -= 1;
                    b.bytes -= p.bytes;
                    if b.files == 0 {
                        s.emptied.notify_all();
                    }
                }
            });
        match worker {
            Ok(w) => ReclaimQueue {
                shared,
                tx: Mutex::new(Some(tx)),
                worker: Mutex::new(Some(w)),
            },
            Err(e) => {
                tracing::warn!("cannot start the reclaim thread, unlinks free space inline: {e}");
                ReclaimQueue {
                    shared,
                    tx: Mutex::new(None),
                    worker: Mutex::new(None),
                }
            }
        }
    }

    /// Takes the last fd of a backing file whose name is gone; `bytes` is
    /// the space it holds (`st_blocks * 512`). Closed in the background, or
    /// right here when the backlog is full.
    pub fn reclaim(&self, fd: OwnedFd, bytes: u64) {
        {
            let mut b = self.lock_backlog();
            if b.files + 1 > MAX_PENDING_FILES || b.bytes.saturating_add(bytes) > MAX_PENDING_BYTES
            {
                drop(b);
                drop(fd);
                return;
            }
            b.files += 1;
            b.bytes += bytes;
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let sent = match tx.as_ref() {
            Some(tx) => tx.try_send(Pending { fd, bytes }),
            None => Err(TrySendError::Disconnected(Pending { fd, bytes })),
        };
        drop(tx);
        if let Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) = sent {
            drop(p.fd);
            let mut b = self.lock_backlog();
            b.files -= 1;
            b.bytes -= p.bytes;
            if b.files == 0 {
                self.shared.emptied.notify_all();
            }
        }
    }

    /// Waits until every handed-over file has been closed, so the backing
    /// filesystem's free-space figures include them.
    pub fn drain(&self) {
        let mut b = self.lock_backlog();
        while b.files > 0 {
            b = self
                .shared
                .emptied
                .wait(b)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Files waiting to be closed.
    pub fn pending(&self) -> u64 {
        self.lock_backlog().files
    }

    fn lock_backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.shared
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ReclaimQueue {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has closed the rest.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn backing_file(dir: &std::path::Path, name: &str, len: usize) -> (OwnedFd, u64) {
        let p = dir.join(name);
        std::fs::write(&p, vec![7u8; len]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let blocks = f.metadata().unwrap().blocks() * 512;
        std::fs::remove_file(&p).unwrap();
        (OwnedFd::from(f), blocks)
    }

    #[test]
    fn reclaimed_files_are_closed_and_drain_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let q = ReclaimQueue::new();
        for i in 0..50 {
            let (fd, bytes) = backing_file(dir.path(), &format!("f{i}"), 10_000);
            q.reclaim(fd, bytes);
        }
        q.drain();
        assert_eq!(q.pending(), 0);
        // No fd of the process still points at a deleted file of ours.
        let leaked = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.starts_with(dir.path()))
            .count();
        assert_eq!(leaked, 0);
    }

    #[test]
    fn a_reclaim_beyond_the_byte_bound_is_done_inline() {
        let dir = tempfile::tempdir().unwrap();
        let q = ReclaimQueue::new();
        let (fd, _) = backing_file(dir.path(), "big", 4096);
        // Claimed size over the bound: closed inline, never queued.
        q.reclaim(fd, MAX_PENDING_BYTES + 1);
        assert_eq!(q.pending(), 0);
        let leaked = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.starts_with(dir.path()))
            .count();
        assert_eq!(leaked, 0);
    }
}
