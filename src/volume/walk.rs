//! Walking a volume's namespace: one backing directory as plaintext names
//! ([`Volume::list_dir`]), or the whole tree, depth first, for volume-wide
//! jobs (the shared walker under [`super::rewrap`] and [`super::census`]).
//!
//! Owns: the order of a walk (the root record, then depth-first every
//! directory record and file header, with an explicit stack so a deep tree
//! cannot overflow a thread's stack) and what a listing skips (reserved
//! names, names that do not authenticate, long names without a valid
//! sidecar).
//! Must never: change anything (its callers do, entry by entry), or hold
//! the namespace lock (its callers take it per entry).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirEntryExt;

use crate::format::header::EncryptionContext;
use crate::format::names::{classify_entry, long_entry_name, EntryClass, MAX_SIDECAR};
use crate::format::reserved;
use crate::sys;
use crate::volume::backing;
use crate::volume::{Directory, Volume, VolumeError};

// Moved to `rewrap` and `census`; kept at this path for their users.
pub use super::census::{Census, CensusEntry};
pub use super::rewrap::{RewrapProgress, RewrapReport};

/// One entry of a backing directory, with its plaintext name.
#[derive(Debug)]
pub struct PlainEntry {
    /// Plaintext name.
    pub name: Vec<u8>,
    /// Backing entry name.
    pub entry: String,
    /// Backing inode number.
    pub backing_ino: u64,
    /// Backing file type (as the directory entry reports it).
    pub file_type: Option<std::fs::FileType>,
}

/// What the walker visits: a directory (its record) or a regular file
/// (its header), with its encryption context and plaintext path.
pub(crate) enum Item<'a> {
    Dir {
        fd: BorrowedFd<'a>,
        ctx: EncryptionContext<'a>,
        path: &'a [u8],
    },
    File {
        parent: BorrowedFd<'a>,
        entry: &'a str,
        ctx: EncryptionContext<'a>,
        path: &'a [u8],
    },
}

impl Item<'_> {
    /// The item's plaintext path (components joined by `/`; empty for the root).
    pub(crate) fn path(&self) -> &[u8] {
        match self {
            Item::Dir { path, .. } | Item::File { path, .. } => path,
        }
    }
}

impl Volume {
    /// Lists a backing directory with decrypted names. Entries whose names do
    /// not authenticate (or long names without a valid sidecar) are skipped
    /// with a warning.
    pub fn list_dir(
        &self,
        dir_fd: BorrowedFd<'_>,
        dir: &Directory,
    ) -> Result<Vec<PlainEntry>, VolumeError> {
        let path = sys::proc_path(dir_fd);
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&path)? {
            let ent = ent?;
            let raw = ent.file_name();
            let Some(entry) = raw.to_str() else { continue };
            if reserved::is_reserved(entry) {
                continue;
            }
            let encoded = match classify_entry(entry) {
                EntryClass::Internal => continue,
                EntryClass::Short => entry.to_string(),
                EntryClass::Long => {
                    let side = reserved::sidecar_name(entry);
                    // Through the directory fd, a regular file only, never
                    // more than a sidecar can hold: a symlink or FIFO
                    // planted at the sidecar's name is not followed.
                    let full = sys::read_regular_limited(dir_fd, OsStr::new(&side), MAX_SIDECAR)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    match full {
                        Some(full) if long_entry_name(&full) == entry => full,
                        _ => {
                            tracing::warn!("long name without a valid sidecar skipped");
                            continue;
                        }
                    }
                }
            };
            match dir.names.decrypt_name(&encoded) {
                Ok(name) => out.push(PlainEntry {
                    name,
                    entry: entry.to_string(),
                    backing_ino: ent.ino(),
                    file_type: ent.file_type().ok(),
                }),
                Err(e) => tracing::warn!("undecryptable entry skipped: {e}"),
            }
        }
        Ok(out)
    }

    /// Visits the root record, then depth-first every directory record and
    /// file header. Errors of single entries go to `on_error`; the walk goes on.
    pub(crate) fn walk(
        &self,
        visit: &mut dyn FnMut(Item<'_>) -> Result<(), VolumeError>,
        on_error: &mut dyn FnMut(VolumeError),
    ) -> Result<(), VolumeError> {
        let root = self.root_fd()?;
        if let Err(e) = visit(Item::Dir {
            fd: root.as_fd(),
            ctx: EncryptionContext::ROOT,
            path: b"",
        }) {
            on_error(e);
        }
        match self.load_dir(root.as_fd(), &EncryptionContext::ROOT) {
            Ok(dir) => self.walk_dir(root, dir, visit, on_error),
            Err(e) => on_error(e),
        }
        Ok(())
    }

    /// Depth-first below `root`, with an explicit stack of open directories
    /// rather than recursion: a deep tree (hundreds of levels) must not
    /// overflow the stack of the thread that walks it (a daemon thread). One
    /// descriptor is held per level of the current path, as with recursion.
    fn walk_dir(
        &self,
        root: OwnedFd,
        root_dir: Directory,
        visit: &mut dyn FnMut(Item<'_>) -> Result<(), VolumeError>,
        on_error: &mut dyn FnMut(VolumeError),
    ) {
        struct Frame {
            fd: OwnedFd,
            dir: Directory,
            path: Vec<u8>,
            entries: std::vec::IntoIter<PlainEntry>,
        }
        let open =
            |fd: &OwnedFd, dir: Directory, path: Vec<u8>, on_error: &mut dyn FnMut(VolumeError)| {
                let entries = match self.list_dir(fd.as_fd(), &dir) {
                    Ok(e) => e,
                    Err(e) => {
                        on_error(e);
                        Vec::new()
                    }
                };
                (dir, path, entries.into_iter())
            };
        let (dir, path, entries) = open(&root, root_dir, Vec::new(), on_error);
        let mut stack = vec![Frame {
            fd: root,
            dir,
            path,
            entries,
        }];
        while let Some(top) = stack.last_mut() {
            let Some(e) = top.entries.next() else {
                stack.pop();
                continue;
            };
            let ctx = EncryptionContext {
                parent_dir_id: top.dir.id,
                name: &e.name,
            };
            let mut path = top.path.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            match e.file_type {
                Some(t) if t.is_dir() => {
                    let child = match backing::open_dir(top.fd.as_fd(), OsStr::new(&e.entry)) {
                        Ok(c) => c,
                        Err(err) => {
                            on_error(err.into());
                            continue;
                        }
                    };
                    if let Err(err) = visit(Item::Dir {
                        fd: child.as_fd(),
                        ctx,
                        path: &path,
                    }) {
                        on_error(err);
                    }
                    match self.load_dir(child.as_fd(), &ctx) {
                        Ok(d) => {
                            let (dir, path, entries) = open(&child, d, path, on_error);
                            stack.push(Frame {
                                fd: child,
                                dir,
                                path,
                                entries,
                            });
                        }
                        Err(err) => on_error(err),
                    }
                }
                Some(t) if t.is_file() => {
                    if let Err(err) = visit(Item::File {
                        parent: top.fd.as_fd(),
                        entry: &e.entry,
                        ctx,
                        path: &path,
                    }) {
                        on_error(err);
                    }
                }
                _ => {}
            }
        }
    }
}
