//! Attributes as the kernel sees them: the plaintext size (derived from the
//! ciphertext size, or the open file's), a symlink's target length, link
//! counts, times and modes of the backing object; and the conversions
//! between fuser's types and the backing layer's.
//!
//! Owns: [`SealFs::attr`] and its helpers.
//! Must never: read content or a header to compute an attribute.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

use crate::format::layout::plaintext_size;
use crate::volume::backing::{self, TimeSpec};
use crate::volume::EntryKind;

use crate::fs::inodes::Inode;
use crate::fs::{FsResult, SealFs, ROOT};

pub(super) fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFREG => FileType::RegularFile,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub(super) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

pub(super) fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::Omit,
        Some(TimeOrNow::Now) => TimeSpec::Now,
        Some(TimeOrNow::SpecificTime(st)) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                TimeSpec::At(-(d.as_secs() as i64), 0)
            }
        },
    }
}

impl SealFs {
    /// The attributes of `inode`, whose backing object has `st`.
    pub(super) fn attr(&self, inode: &Inode, st: &libc::stat) -> FileAttr {
        if inode.ino == ROOT {
            let mut st = *st;
            crate::volume::rootattrs::present(self.root_attrs.read().as_ref(), &mut st);
            return self.attr_of(inode, &st);
        }
        self.attr_of(inode, st)
    }

    fn attr_of(&self, inode: &Inode, st: &libc::stat) -> FileAttr {
        let ts = |s: i64, n: i64| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, n as u32)
            } else {
                UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(n as u64)
            }
        };
        let size = match inode.kind {
            EntryKind::File => match inode.open.lock().file.as_ref() {
                Some(f) => f.read().size(),
                None => plaintext_size(st.st_size as u64).unwrap_or(0),
            },
            EntryKind::Symlink => self
                .symlink_target(inode)
                .map(|t| t.len() as u64)
                .unwrap_or(0),
            _ => st.st_size as u64,
        };
        FileAttr {
            ino: INodeNo(inode.ino),
            size,
            // What the ciphertext occupies on disk (sparse files stay small).
            blocks: st.st_blocks as u64,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            crtime: ts(st.st_ctime, st.st_ctime_nsec),
            kind: file_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            // Exact: a backing link per name (0 for an open file whose
            // names are gone). Volumes without hard links never have more
            // than one, unless someone linked backing files behind the
            // mount's back (and those names fail to open).
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The current attributes of `inode`.
    pub(super) fn stat_inode(&self, inode: &Inode) -> FsResult<FileAttr> {
        let st = self.with_backing(inode, backing::stat)?;
        Ok(self.attr(inode, &st))
    }

    /// chmod/chown of the mount root: its presented attributes change
    /// (`sealfs.root`), never the cipher directory's own.
    pub(super) fn change_root_attrs(
        &self,
        root: &Inode,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> FsResult<()> {
        let st = self.with_backing(root, backing::stat)?;
        let dir = self.root_dir()?;
        let mut cached = self.root_attrs.write();
        let a = self
            .vol
            .change_root_attrs(&dir, &st, mode, uid, gid)
            .map_err(|e| {
                tracing::warn!("cannot store the root's attributes: {e}");
                Errno::from_i32(e.errno())
            })?;
        *cached = Some(a);
        Ok(())
    }

    /// The plaintext target of a symlink inode.
    pub(super) fn symlink_target(&self, inode: &Inode) -> FsResult<Vec<u8>> {
        let stored = self.with_backing(inode, backing::read_link)?;
        self.root_dir()?
            .names
            .open_symlink_target(&stored)
            .map_err(|e| {
                tracing::warn!(ino = inode.ino, "symlink target failed authentication: {e}");
                Errno::EIO
            })
    }
}
