//! Directory listings: decrypted once per directory version and kept on
//! the inode while the directory is unchanged — no change through this
//! mount since (a counter bumped by every change), the same parent, and the
//! same backing times, size and link count (a change made underneath).
//!
//! Owns: the listing cache and what invalidates it.
//! Must never: serve a listing older than a change made through this
//! mount, or keep one of more than [`LISTING_CACHE_MAX`] entries.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{FileType, INodeNo};

use crate::volume::backing;

use crate::fs::inodes::Inode;
use crate::fs::{errno_of, io_errno, FsResult, SealFs, ROOT};

/// Directories with more entries than this are listed afresh on every
/// opendir instead of being kept (bounds the daemon's memory).
pub(super) const LISTING_CACHE_MAX: usize = 16_384;

/// What a cached listing is valid for: no change through the mount since,
/// the same parent (for `..`), and the same backing directory times, size
/// and link count (a change made underneath the mount; on kernels with
/// fine-grained timestamps, 6.13 and later, every such change shows).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct ListingStamp {
    pub(super) changes: u64,
    pub(super) parent: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
    pub(super) size: i64,
    pub(super) nlink: u64,
}

/// A directory's decrypted listing (names decrypted once per directory
/// version, not once per opendir).
pub(super) struct CachedListing {
    pub(super) stamp: ListingStamp,
    pub(super) entries: Arc<Vec<Listed>>,
}

/// One entry of a directory listing taken at opendir.
pub(super) struct Listed {
    pub(super) ino: u64,
    pub(super) kind: FileType,
    pub(super) name: OsString,
    /// The backing entry name; `None` for `.` and `..`.
    pub(super) entry: Option<String>,
}

impl SealFs {
    /// Marks the entries of directory `ino` changed (after the change, so
    /// that a listing taken meanwhile is not kept: its stamp is older).
    pub(super) fn dir_changed(&self, ino: INodeNo) {
        if let Ok(i) = self.inode(ino) {
            i.changes.fetch_add(1, Ordering::AcqRel);
            *i.listing.lock() = None;
        }
    }

    /// The entries of a directory, `.` and `..` first: the cached listing
    /// when the directory is unchanged, else freshly read and decrypted.
    pub(super) fn list_dir(&self, inode: &Arc<Inode>) -> FsResult<Arc<Vec<Listed>>> {
        let dir = self.dir_of(inode)?;
        // Read before the listing: a change that lands while it is read
        // bumps the counter past this stamp.
        let changes = inode.changes.load(Ordering::Acquire);
        let parent_ino = inode
            .loc
            .lock()
            .parent
            .as_ref()
            .map(|p| p.ino)
            .unwrap_or(ROOT);
        let st = backing::stat(inode.dir_fd()?, OsStr::new("")).map_err(io_errno)?;
        let stamp = ListingStamp {
            changes,
            parent: parent_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            size: st.st_size,
            nlink: st.st_nlink,
        };
        if let Some(c) = inode.listing.lock().as_ref() {
            if c.stamp == stamp {
                return Ok(c.entries.clone());
            }
        }
        let mut out = vec![
            Listed {
                ino: inode.ino,
                kind: FileType::Directory,
                name: ".".into(),
                entry: None,
            },
            Listed {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
                entry: None,
            },
        ];
        let entries = self
            .vol
            .list_dir(inode.dir_fd()?, &dir)
            .map_err(|e| errno_of(&e))?;
        for e in entries {
            use std::os::unix::fs::FileTypeExt;
            let kind = match e.file_type {
                Some(t) if t.is_dir() => FileType::Directory,
                Some(t) if t.is_symlink() => FileType::Symlink,
                Some(t) if t.is_fifo() => FileType::NamedPipe,
                Some(t) if t.is_socket() => FileType::Socket,
                Some(t) if t.is_char_device() => FileType::CharDevice,
                Some(t) if t.is_block_device() => FileType::BlockDevice,
                _ => FileType::RegularFile,
            };
            out.push(Listed {
                ino: self.listed_ino(e.backing_ino),
                kind,
                name: OsString::from_vec(e.name),
                entry: Some(e.entry),
            });
        }
        let out = Arc::new(out);
        *inode.listing.lock() = (out.len() <= LISTING_CACHE_MAX).then(|| CachedListing {
            stamp,
            entries: out.clone(),
        });
        Ok(out)
    }
}
