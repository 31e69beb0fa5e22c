//! Listing backing directories as plaintext names, and walking the whole
//! tree for volume-wide jobs: re-wrapping every header under the primary key
//! version (KMS ReEncrypt) and counting headers per key version.
//!
//! Owns: the order and crash safety of re-wrapping (per header: add the new
//! slot durably, then drop the old one; directory records are replaced
//! atomically), and its progress counters.
//! Must never: re-encrypt content, or hold the namespace lock across more
//! than one entry (renames and creates go on while a rewrap runs).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirEntryExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::format::header::{EncryptionContext, RecordKind, SealedRecord, RECORD_LEN};
use crate::format::names::{classify_entry, long_entry_name, EntryClass};
use crate::format::reserved;
use crate::sys;
use crate::volume::{Directory, Volume, VolumeError, DIR_RECORD, DIR_RECORD_BACKUP};

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

/// Headers per master key version, from a full scan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    /// File headers per key version (of the slot that opens).
    pub files: BTreeMap<u32, u64>,
    /// Directory records per key version.
    pub dirs: BTreeMap<u32, u64>,
    /// Headers or records that did not open (tampered, moved, or under a
    /// retired/destroyed version).
    pub unreadable: u64,
    /// Unreadable ones per key version they name (e.g. a destroyed version).
    pub unreadable_by_version: BTreeMap<u32, u64>,
    /// When the scan finished (seconds since the epoch).
    pub scanned_at: u64,
}

/// What a census found for one directory or file: its plaintext path and
/// the key version of the slot that opens its header.
#[derive(Debug)]
pub struct CensusEntry<'a> {
    /// Plaintext path from the volume root, components joined by `/`
    /// (empty for the root directory).
    pub path: &'a [u8],
    /// A directory (its record) rather than a file (its header).
    pub is_dir: bool,
    /// The key version that opens it; `None` if it does not open (tampered,
    /// moved, or under a retired or destroyed version).
    pub key_version: Option<u32>,
}

enum Item<'a> {
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
                    match std::fs::read_to_string(path.join(&side)) {
                        Ok(full) if long_entry_name(&full) == entry => full,
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
    fn walk(
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
                    let child = match sys::openat(
                        top.fd.as_fd(),
                        OsStr::new(&e.entry),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    ) {
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
        let fd = match sys::open_regular(parent, OsStr::new(entry), libc::O_RDWR) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false), // renamed or removed meanwhile
            Err(e) => return Err(e.into()),
        };
        let file = fd;
        let buf = super::content::read_header(&file)?;
        let primary = self.keyring().read().primary();
        let rec = SealedRecord::decode(RecordKind::File, &buf)?;
        if rec.slots.iter().flatten().all(|s| s.key_version == primary) {
            return Ok(false);
        }
        let staged = self.begin_rebind_file(&file, ctx, ctx)?;
        self.finish_rebind_file(&file, staged)?;
        Ok(true)
    }

    fn rewrap_dir_record(
        &self,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
    ) -> Result<bool, VolumeError> {
        let primary = self.keyring().read().primary();
        let mut buf = [0u8; RECORD_LEN];
        let f = sys::open_regular(fd, OsStr::new(DIR_RECORD), libc::O_RDONLY)?;
        sys::read_exact_at(&f, &mut buf, 0).map_err(VolumeError::short_read)?;
        let rec = SealedRecord::decode(RecordKind::Dir, &buf)?;
        if rec.slots.iter().flatten().all(|s| s.key_version == primary) {
            return Ok(false);
        }
        let d = self.load_dir(fd, ctx)?;
        self.finish_rebind_dir(fd, &d, ctx)?;
        Ok(true)
    }

    /// Counts headers and directory records per key version (a full scan).
    pub fn census(&self) -> Result<Census, VolumeError> {
        self.census_with(&mut |_| {})
    }

    /// Like [`Volume::census`], and reports every directory and file it
    /// reaches to `on_entry`, with its plaintext path and key version.
    pub fn census_with(
        &self,
        on_entry: &mut dyn FnMut(CensusEntry<'_>),
    ) -> Result<Census, VolumeError> {
        let mut c = Census::default();
        // Snapshot the wrapping keys so rotation is not blocked by the scan.
        let wrappers: std::collections::HashMap<(u32, bool), crate::crypto::SealingKey> = {
            let kr = self.keyring().read();
            kr.versions()
                .iter()
                .flat_map(|v| {
                    [RecordKind::File, RecordKind::Dir]
                        .into_iter()
                        .filter_map(|k| {
                            kr.wrapper(v.version, k)
                                .map(|w| ((v.version, k == RecordKind::File), w))
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let wrapper = |kind: RecordKind| {
            let wrappers = &wrappers;
            move |v: u32| wrappers.get(&(v, kind == RecordKind::File)).cloned()
        };
        let vid = self.volume_id();
        let mut tally =
            |kind: RecordKind, bytes: &[u8], ctx: &EncryptionContext<'_>, path: &[u8]| {
                let report = |key_version| CensusEntry {
                    path,
                    is_dir: kind == RecordKind::Dir,
                    key_version,
                };
                let rec = match SealedRecord::decode(kind, bytes) {
                    Ok(r) => r,
                    Err(_) => {
                        c.unreadable += 1;
                        on_entry(report(None));
                        return;
                    }
                };
                let w = wrapper(kind);
                match rec.open(&vid, ctx, &w) {
                    Ok((_, slot)) => {
                        let v = rec.slots[slot].map(|s| s.key_version).unwrap_or(0);
                        let map = if kind == RecordKind::File {
                            &mut c.files
                        } else {
                            &mut c.dirs
                        };
                        *map.entry(v).or_default() += 1;
                        on_entry(report(Some(v)));
                    }
                    Err(_) => {
                        c.unreadable += 1;
                        on_entry(report(None));
                        if let Some(s) = rec.slots.iter().flatten().next() {
                            *c.unreadable_by_version.entry(s.key_version).or_default() += 1;
                        }
                    }
                }
            };
        self.walk(
            &mut |item| {
                let mut buf = [0u8; RECORD_LEN];
                match item {
                    Item::Dir { fd, ctx, path } => {
                        let name = [DIR_RECORD, DIR_RECORD_BACKUP]
                            .into_iter()
                            .find(|n| sys::fstatat(fd, OsStr::new(n)).is_ok())
                            .unwrap_or(DIR_RECORD);
                        let f = sys::open_regular(fd, OsStr::new(name), libc::O_RDONLY)?;
                        sys::read_exact_at(&f, &mut buf, 0).map_err(VolumeError::short_read)?;
                        tally(RecordKind::Dir, &buf, &ctx, path);
                    }
                    Item::File {
                        parent,
                        entry,
                        ctx,
                        path,
                    } => {
                        let f = sys::open_regular(parent, OsStr::new(entry), libc::O_RDONLY)?;
                        match super::content::read_header(&f) {
                            Ok(header) => tally(RecordKind::File, &header, &ctx, path),
                            Err(_) => tally(RecordKind::File, &[], &ctx, path),
                        }
                    }
                }
                Ok(())
            },
            &mut |_| {},
        )?;
        c.scanned_at = crate::sys::now_secs();
        Ok(c)
    }
}
