//! The step orders of every namespace change in a cipher directory: create a
//! file, make a directory, a symlink or a special node, rename (file,
//! directory or keyless node, replacing a target or not), unlink and rmdir,
//! each with its rollback on failure and the fsync order of docs/FORMAT.md
//! §6. The FUSE frontend, the library ([`crate::Vault`]) and fsck's salvage
//! all change names through here.
//!
//! Every step takes the backing directory's fd and the entry's
//! [`BackingName`] (already encrypted by the caller under the parent's name
//! key), so callers keep their own inode or path bookkeeping, hold the
//! volume's namespace lock as they need, and decide what happens between
//! steps (an audit record, attributes): a new entry is a [`NewEntry`] that
//! is removed again, with its long-name sidecar, unless it is kept.
//!
//! The orders, in short:
//! * create: name sidecar → backing entry (`O_EXCL`) → header or directory
//!   record (→ record sync → parent fsync, when made durably); a file is
//!   made unnamed (`O_TMPFILE`) where the backing filesystem can, and
//!   linked under its name only with its header written;
//! * rename: sidecar of the new name → add a slot bound to the new context
//!   (durable) → `renameat2` → fsync of the new parent → drop the old slot
//!   (kept if that fsync failed) → the old name's sidecar goes;
//! * unlink / rmdir: entry (a directory's records just before it) → sidecar
//!   (→ a linked file's tag of that name, [`remove_name`]);
//! * link: sidecar of the new name → the file made openable as the new
//!   name, durably ([`Volume::begin_link`]) → `linkat` → the file's
//!   leftover path slot goes ([`Volume::finish_link`]).
//!
//! Owns: these orders and their rollbacks; long-name sidecars.
//! Must never: know about FUSE, inodes, grants or audit; take the namespace
//! lock itself (its callers do); leave a sidecar or a half-made entry
//! behind on a failure it can undo.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::format::header::EncryptionContext;
use crate::format::names::BackingName;
use crate::format::reserved::{self, DIR_RECORDS};
use crate::sys;
use crate::volume::backing::{self, EntryKind};
use crate::volume::content::SealedFile;
use crate::volume::{Directory, Volume, VolumeError};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

// ------------------------------------------------------------ sidecars

/// Writes the sidecar of a long name (the full encoded name) into the
/// backing directory `dir`, before the entry itself is created. A short
/// name has no sidecar and nothing is written.
///
/// A sidecar that is already there with the right content (the same name
/// always has the same sidecar, e.g. a rename onto an existing long name)
/// is left alone; otherwise it is written to a temporary file and renamed
/// into place, so a failed write (a full disk) never truncates the sidecar
/// of an existing entry.
pub fn write_name_sidecar(dir: BorrowedFd<'_>, bn: &BackingName) -> io::Result<()> {
    let Some((side, full)) = &bn.sidecar else {
        return Ok(());
    };
    if let Ok(f) = sys::open_regular(dir, OsStr::new(side), libc::O_RDONLY) {
        let mut buf = vec![0u8; full.len() + 1];
        if f.read_at(&mut buf, 0).ok() == Some(full.len()) && &buf[..full.len()] == full.as_bytes()
        {
            return Ok(());
        }
    }
    let tmp = reserved::temp_name(side);
    sys::remove_stale_regular(dir, OsStr::new(&tmp))?;
    let r = (|| {
        let f = sys::create_new_regular(dir, OsStr::new(&tmp), 0o600)?;
        sys::write_all_at(&f, full.as_bytes(), 0)?;
        sys::renameat2(dir, OsStr::new(&tmp), dir, OsStr::new(side), 0)
    })();
    if r.is_err() {
        let _ = sys::unlinkat(dir, OsStr::new(&tmp), false);
    }
    r
}

/// Removes the sidecar of a long name (best effort: after the entry is gone).
pub fn remove_name_sidecar(dir: BorrowedFd<'_>, bn: &BackingName) {
    if let Some((side, _)) = &bn.sidecar {
        let _ = sys::unlinkat(dir, OsStr::new(side), false);
    }
}

/// After a failed create or rename: removes the sidecar written for it,
/// unless an entry of that name exists (then the sidecar is its own).
pub fn undo_name_sidecar(dir: BorrowedFd<'_>, bn: &BackingName) {
    if bn.sidecar.is_none() {
        return;
    }
    if let Err(e) = sys::fstatat(dir, OsStr::new(&bn.entry)) {
        if e.raw_os_error() == Some(libc::ENOENT) {
            remove_name_sidecar(dir, bn);
        }
    }
}

/// The backing name of an existing entry `entry` found in a backing
/// directory (fsck's orphans): its sidecar's name if it is a long name,
/// with `full` (the sidecar's content, if known). Use it as the source of
/// a rename or the victim of a removal, never as a name to create.
pub fn existing_entry(entry: &str, full: Option<&str>) -> BackingName {
    let long = entry.starts_with(reserved::LONG_NAME_PREFIX) && !reserved::is_reserved(entry);
    BackingName {
        entry: entry.to_string(),
        sidecar: long.then(|| {
            (
                reserved::sidecar_name(entry),
                full.unwrap_or_default().to_string(),
            )
        }),
    }
}

// ------------------------------------------------------------ creating

/// What a [`NewEntry`] is, for its rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    File,
    /// An unnamed file (`O_TMPFILE`): it gets its name only when kept,
    /// complete, so a crash before leaves nothing.
    Unnamed,
    Dir,
}

/// A backing entry just made for a new file or directory, not yet kept:
/// dropped without [`NewEntry::keep`], it is removed again (a directory
/// with its records) with its long-name sidecar.
#[derive(Debug)]
pub struct NewEntry<'d> {
    dir: BorrowedFd<'d>,
    name: &'d BackingName,
    made: Made,
    /// The new file, until its header is written.
    file: Option<File>,
    armed: bool,
}

impl NewEntry<'_> {
    /// The backing entry name.
    pub fn entry(&self) -> &OsStr {
        OsStr::new(&self.name.entry)
    }

    /// Writes the header of the new file bound to `ctx` (not synced) and
    /// returns its content, open read-write.
    pub fn seal_file(
        &mut self,
        vol: &Volume,
        ctx: &EncryptionContext<'_>,
    ) -> Result<SealedFile, VolumeError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the file's header is written already"))?;
        vol.init_file(file, ctx)
    }

    /// [`NewEntry::seal_file`] with the data key wrapped by key `key` (the
    /// key of the subtree the file is made in).
    pub fn seal_file_with_key(
        &mut self,
        vol: &Volume,
        ctx: &EncryptionContext<'_>,
        key: u32,
    ) -> Result<SealedFile, VolumeError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the file's header is written already"))?;
        vol.init_file_with_key(file, ctx, key)
    }

    /// Writes both copies of the new directory's record bound to `ctx` (not
    /// synced: see [`Volume::init_dir`]); `fd` is the new directory's.
    pub fn init_dir(
        &self,
        vol: &Volume,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
    ) -> Result<Directory, VolumeError> {
        vol.init_dir(fd, ctx)
    }

    /// [`NewEntry::init_dir`] with the record wrapped by key `key`.
    pub fn init_dir_with_key(
        &self,
        vol: &Volume,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
        key: u32,
    ) -> Result<Directory, VolumeError> {
        vol.init_dir_with_key(fd, ctx, key)
    }

    /// Keeps the new directory or node.
    pub fn keep(mut self) {
        debug_assert!(!matches!(self.made, Made::Unnamed), "keep_file names files");
        self.armed = false;
    }

    /// Keeps the new file, whose backing file is now `backing` (the one
    /// [`NewEntry::seal_file`] took, header written): an unnamed one gets
    /// its name here. `EEXIST` when the name was taken meanwhile (the new
    /// file then goes, with the sidecar if the name is not its owner's).
    pub fn keep_file(mut self, backing: &File) -> io::Result<()> {
        if matches!(self.made, Made::Unnamed) {
            sys::link_unnamed(backing, self.dir, self.entry())?;
        }
        self.armed = false;
        Ok(())
    }

    /// Whether the new file has no name yet (see [`Made::Unnamed`]).
    fn unnamed_file(&self) -> Option<&File> {
        match self.made {
            Made::Unnamed => self.file.as_ref(),
            _ => None,
        }
    }

    /// Gives the new entry to `uid`, and to `gid` unless its directory is
    /// set-group-ID (see [`give_new_entry`]).
    pub fn give_to(&self, uid: u32, gid: u32) -> io::Result<()> {
        let Some(f) = self.unnamed_file() else {
            return give_new_entry(self.dir, self.entry(), uid, gid);
        };
        let sgid = sys::fstatat(self.dir, OsStr::new(""))?.st_mode & libc::S_ISGID != 0;
        sys::fchownat(f.as_fd(), OsStr::new(""), Some(uid), (!sgid).then_some(gid))
    }

    /// Gives the new file, header written (`backing`, see
    /// [`NewEntry::seal_file`]), exactly the permission bits `mode` (see
    /// [`set_new_mode`]). Returns its attributes as they are then for a
    /// named file (one stat, a second only when the mode changed), `None`
    /// for an unnamed one: stat it once [`NewEntry::keep_file`] named it.
    /// An unnamed file was made with `mode` less the daemon's umask and
    /// given to its owner (which clears set-ID bits): it is chmod'ed only
    /// when either took a bit away.
    pub fn finish_mode(&self, backing: &File, mode: u32) -> io::Result<Option<libc::stat>> {
        if !matches!(self.made, Made::Unnamed) {
            return set_new_mode_stat(self.dir, self.entry(), mode).map(Some);
        }
        let mode = mode & 0o7777;
        if mode & 0o7000 != 0 || mode & sys::process_umask() != 0 {
            backing.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        Ok(None)
    }

    /// Finishes a new directory durably (the library and fsck): both copies
    /// of its record bound to `ctx`, synced, then its parent fsynced; the
    /// entry is kept. On failure nothing is left. Returns its fd and its
    /// directory.
    /// Its record is wrapped by key `key` (the subtree's, or the default key).
    pub fn finish_dir_durably(
        self,
        vol: &Volume,
        ctx: &EncryptionContext<'_>,
        key: u32,
    ) -> Result<(OwnedFd, Directory), VolumeError> {
        let fd = backing::open_dir(self.dir, self.entry())?;
        let d = self.init_dir_with_key(vol, fd.as_fd(), ctx, key)?;
        vol.persist_dir_record(fd.as_fd())?;
        sys::fsync_dir(self.dir)?;
        self.keep();
        Ok((fd, d))
    }
}

impl Drop for NewEntry<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let entry = OsStr::new(&self.name.entry);
        match self.made {
            Made::File => {
                let _ = sys::unlinkat(self.dir, entry, false);
            }
            // Never named: it goes with its last fd. Its name may have been
            // taken meanwhile, with the sidecar then the other entry's.
            Made::Unnamed => {
                undo_name_sidecar(self.dir, self.name);
                return;
            }
            Made::Dir => {
                if let Ok(fd) = backing::open_dir(self.dir, entry) {
                    remove_dir_records(fd.as_fd());
                }
                let _ = sys::unlinkat(self.dir, entry, true);
            }
        }
        remove_name_sidecar(self.dir, self.name);
    }
}

/// Creates the backing file of a new regular file in `dir`: its name's
/// sidecar, then the file (permission bits `mode`). Where the backing
/// filesystem can (`O_TMPFILE`), the file has no name until
/// [`NewEntry::keep_file`] links it, header written, so a crash in between
/// leaves no header-less entry (which would not open: its key would be
/// lost); an existing name then shows as `EEXIST` there. Elsewhere the
/// entry is made at once (`O_EXCL`): an existing entry is `EEXIST` here
/// (its sidecar, being its own, is kept). On failure the sidecar is
/// undone. Write its header with [`NewEntry::seal_file`].
pub fn create_file<'d>(
    dir: BorrowedFd<'d>,
    bn: &'d BackingName,
    mode: u32,
) -> io::Result<NewEntry<'d>> {
    write_name_sidecar(dir, bn)?;
    match sys::open_unnamed(dir, mode) {
        Ok(Some(file)) => {
            return Ok(NewEntry {
                dir,
                name: bn,
                made: Made::Unnamed,
                file: Some(file),
                armed: true,
            })
        }
        Ok(None) => {}
        Err(e) => {
            undo_name_sidecar(dir, bn);
            return Err(e);
        }
    }
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    match sys::openat(dir, OsStr::new(&bn.entry), flags, mode) {
        Ok(fd) => Ok(NewEntry {
            dir,
            name: bn,
            made: Made::File,
            file: Some(File::from(fd)),
            armed: true,
        }),
        Err(e) => {
            if e.raw_os_error() != Some(libc::EEXIST) {
                undo_name_sidecar(dir, bn);
            }
            Err(e)
        }
    }
}

/// Creates the backing directory of a new directory in `dir`: its name's
/// sidecar, then the entry (`mode`). On failure the sidecar is undone (kept
/// for an existing entry). Write its record with [`NewEntry::init_dir`].
pub fn create_dir<'d>(
    dir: BorrowedFd<'d>,
    bn: &'d BackingName,
    mode: u32,
) -> io::Result<NewEntry<'d>> {
    write_name_sidecar(dir, bn)?;
    if let Err(e) = sys::mkdirat(dir, OsStr::new(&bn.entry), mode) {
        undo_name_sidecar(dir, bn);
        return Err(e);
    }
    Ok(NewEntry {
        dir,
        name: bn,
        made: Made::Dir,
        file: None,
        armed: true,
    })
}

/// Makes a keyless node (FIFO, socket, device, symlink) with `make` under
/// its backing name: sidecar, then the node; on failure the sidecar is
/// undone (kept for an existing entry).
fn create_keyless(
    dir: BorrowedFd<'_>,
    bn: &BackingName,
    make: impl FnOnce(BorrowedFd<'_>, &OsStr) -> io::Result<()>,
) -> io::Result<()> {
    write_name_sidecar(dir, bn)?;
    if let Err(e) = make(dir, OsStr::new(&bn.entry)) {
        undo_name_sidecar(dir, bn);
        return Err(e);
    }
    Ok(())
}

/// Makes the symlink `bn` in `dir` with its stored (sealed) target.
pub fn create_symlink(
    dir: BorrowedFd<'_>,
    bn: &BackingName,
    sealed_target: &str,
) -> io::Result<()> {
    create_keyless(dir, bn, |d, entry| {
        sys::symlinkat(OsStr::new(sealed_target), d, entry)
    })
}

/// Makes the FIFO, socket or device node `bn` in `dir` (`mode` with its
/// file type, `rdev` for a device).
pub fn create_special(
    dir: BorrowedFd<'_>,
    bn: &BackingName,
    mode: u32,
    rdev: u64,
) -> io::Result<()> {
    create_keyless(dir, bn, |d, entry| sys::mknodat(d, entry, mode, rdev))
}

/// Gives the new entry `entry` of `dir` to `uid`, and to `gid` unless `dir`
/// is set-group-ID (then it keeps the group the backing filesystem gave it,
/// the parent's, as on ext4).
pub fn give_new_entry(dir: BorrowedFd<'_>, entry: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let sgid = sys::fstatat(dir, OsStr::new(""))?.st_mode & libc::S_ISGID != 0;
    sys::fchownat(dir, entry, Some(uid), (!sgid).then_some(gid))
}

/// Gives the new entry `entry` of `dir` exactly the permission bits `mode`
/// (the caller's umask applied; the backing `open`/`mkdir`/`mknod` applied
/// the daemon's too). A new directory keeps the set-group-ID bit it
/// inherited from its parent; a symlink has no mode. Call it after
/// [`give_new_entry`], since a chown clears set-ID bits.
pub fn set_new_mode(dir: BorrowedFd<'_>, entry: &OsStr, mode: u32) -> io::Result<()> {
    set_new_mode_stat(dir, entry, mode).map(|_| ())
}

/// [`set_new_mode`], returning the entry's attributes as they are after
/// it: the one `fstatat` it makes anyway (a second one only when the mode
/// had to change), so a caller needs none of its own.
pub fn set_new_mode_stat(dir: BorrowedFd<'_>, entry: &OsStr, mode: u32) -> io::Result<libc::stat> {
    let st = sys::fstatat(dir, entry)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Ok(st);
    }
    let mut want = mode & 0o7777;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        want |= st.st_mode & libc::S_ISGID;
    }
    if st.st_mode & 0o7777 != want {
        sys::fchmodat(dir, entry, want)?;
        return sys::fstatat(dir, entry);
    }
    Ok(st)
}

// ------------------------------------------------------------ staged files

/// Creates the new file `temp` (a temp name, `O_EXCL`, `mode`) in `dir`
/// with its header already bound to `ctx`, the context of the name it will
/// get: the content is written there, then [`commit_staged`] puts it in
/// place in one step. Its data key is wrapped by key `key` (the key of
/// the subtree, or the default key). On failure nothing is left.
pub fn create_staged(
    vol: &Volume,
    dir: BorrowedFd<'_>,
    temp: &str,
    ctx: &EncryptionContext<'_>,
    (mode, key): (u32, u32),
) -> Result<SealedFile, VolumeError> {
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let fd = sys::openat(dir, OsStr::new(temp), flags, mode)?;
    vol.init_file_with_key(File::from(fd), ctx, key)
        .inspect_err(|_| {
            let _ = sys::unlinkat(dir, OsStr::new(temp), false);
        })
}

/// Puts the complete staged file `temp` of `dir` in place as `bn`: its
/// name's sidecar, then the rename (over an existing file or symlink, or
/// with `noreplace` never over anything). Sync the file before and `dir`
/// after. On failure the temp file and the sidecar are undone.
pub fn commit_staged(
    dir: BorrowedFd<'_>,
    temp: &str,
    bn: &BackingName,
    noreplace: bool,
) -> io::Result<()> {
    let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
    let r = write_name_sidecar(dir, bn).and_then(|()| {
        sys::renameat2(dir, OsStr::new(temp), dir, OsStr::new(&bn.entry), flags)
            .inspect_err(|_| undo_name_sidecar(dir, bn))
    });
    if r.is_err() {
        discard_staged(dir, temp);
    }
    r
}

/// Removes an unfinished staged file.
pub fn discard_staged(dir: BorrowedFd<'_>, temp: &str) {
    let _ = sys::unlinkat(dir, OsStr::new(temp), false);
}

/// Removes the staged files an interrupted run left in `dir` (of any
/// process: call it only while none of this process is being written
/// there); returns how many.
pub fn remove_staged_leftovers(dir: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n = 0;
    for e in backing::read_dir(dir)? {
        let name = e?.file_name();
        if reserved::is_staged(&name.to_string_lossy()) {
            sys::unlinkat(dir, &name, false)?;
            n += 1;
        }
    }
    Ok(n)
}

// ------------------------------------------------------------ removing

/// A removed object, still pinned by an `O_PATH` fd: closing the fd frees a
/// removed file's blocks, which a caller may do off its request path.
#[derive(Debug)]
pub struct Removed {
    /// The pinning fd.
    pub fd: OwnedFd,
    /// Its attributes, taken before the removal.
    pub st: libc::stat,
}

/// Removes the non-directory entry `bn` of `dir` (`EISDIR` for a
/// directory), then its sidecar.
pub fn unlink(dir: BorrowedFd<'_>, bn: &BackingName) -> io::Result<Removed> {
    let (fd, st) = pin_removable(dir, bn)?;
    unlink_pinned(dir, bn, fd, st)
}

/// Pins the non-directory entry `bn` of `dir` (`EISDIR` for a directory)
/// and takes its attributes from the pin: one `openat` and one `fstat`,
/// both about the very object that is then removed.
fn pin_removable(dir: BorrowedFd<'_>, bn: &BackingName) -> io::Result<(OwnedFd, libc::stat)> {
    let fd = backing::pin(dir, OsStr::new(&bn.entry))?;
    let st = sys::fstat(fd.as_fd())?;
    if EntryKind::of_mode(st.st_mode) == EntryKind::Dir {
        return Err(errno(libc::EISDIR));
    }
    Ok((fd, st))
}

/// Removes the entry `bn` pinned by `fd` (attributes `st`), then its sidecar.
fn unlink_pinned(
    dir: BorrowedFd<'_>,
    bn: &BackingName,
    fd: OwnedFd,
    st: libc::stat,
) -> io::Result<Removed> {
    sys::unlinkat(dir, OsStr::new(&bn.entry), false)?;
    remove_name_sidecar(dir, bn);
    Ok(Removed { fd, st })
}

/// Removes the name `name` (standing for `ctx`) of a non-directory in
/// `dir`, like [`unlink`]; when it was one of several names of a linked
/// file, that name's tag then leaves the file's link table (best effort,
/// after the backing name is gone: a stale tag is harmless, a missing one
/// would not be). The link count comes from the pin's `fstat`, so a
/// plain file's removal costs no `fstatat` of its own.
pub fn remove_name(vol: &Volume, end: RenameEnd<'_>) -> io::Result<Removed> {
    let entry = OsStr::new(&end.name.entry);
    let (fd, st) = pin_removable(end.dir, end.name)?;
    let linked = if EntryKind::of_mode(st.st_mode) == EntryKind::File && st.st_nlink > 1 {
        backing::open_regular(end.dir, entry, libc::O_RDWR).ok()
    } else {
        None
    };
    let removed = unlink_pinned(end.dir, end.name, fd, st)?;
    if let Some(f) = linked {
        crate::keyring::kill_point("unlink-linked-removed");
        if let Err(e) = vol.drop_link(&f, end.ctx) {
            tracing::warn!("unlink: link table not updated: {e}");
        }
    }
    Ok(removed)
}

/// Whether the backing directory `dir` is empty as a directory of the
/// volume (nothing but its record copies and leftover temp files).
pub fn is_empty_dir(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for ent in backing::read_dir(dir)? {
        let name = ent?.file_name();
        if !reserved::is_empty_dir_leftover(&name.to_string_lossy()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes what an empty directory of the volume still holds, just before
/// the directory itself goes: leftover temp files of interrupted record
/// writes (regular files only: anything else stays, and the removal of
/// the directory then fails), then both copies of its record. A directory
/// left half made by a crash (temp files, no record) is removed this way
/// by `rmdir` through a mount, as docs/FORMAT.md §11 says.
fn remove_dir_records(dir: BorrowedFd<'_>) {
    if let Ok(rd) = backing::read_dir(dir) {
        for ent in rd.flatten() {
            let name = ent.file_name();
            let n = name.to_string_lossy();
            if n.ends_with(reserved::TEMP_SUFFIX) && reserved::is_empty_dir_leftover(&n) {
                let _ = sys::remove_stale_regular(dir, &name);
            }
        }
    }
    for n in DIR_RECORDS.iter().rev() {
        let _ = sys::unlinkat(dir, OsStr::new(n), false);
    }
}

/// Removes the directory entry `bn` of `dir` if it is empty (`ENOTEMPTY`
/// otherwise): its records, the entry, then its sidecar. Returns the
/// removed directory's attributes.
pub fn rmdir(dir: BorrowedFd<'_>, bn: &BackingName) -> io::Result<libc::stat> {
    let entry = OsStr::new(&bn.entry);
    let fd = backing::open_dir(dir, entry)?;
    if !is_empty_dir(fd.as_fd())? {
        return Err(errno(libc::ENOTEMPTY));
    }
    let st = sys::fstat(fd.as_fd())?;
    remove_dir_records(fd.as_fd());
    sys::unlinkat(dir, entry, true)?;
    remove_name_sidecar(dir, bn);
    Ok(st)
}

/// Removes a directory left half made or half removed by a crash (no
/// record, nothing but the temp files `leftovers`): fsck's salvage. The
/// parent is fsynced.
pub fn remove_half_made_dir(
    dir: BorrowedFd<'_>,
    bn: &BackingName,
    leftovers: &[String],
) -> io::Result<()> {
    {
        let fd = backing::open_dir(dir, OsStr::new(&bn.entry))?;
        for t in leftovers {
            sys::unlinkat(fd.as_fd(), OsStr::new(t), false)?;
        }
    }
    rmdir(dir, bn)?;
    sys::fsync_dir(dir)
}

// ------------------------------------------------------------ renaming

/// One end of a rename: a backing directory, the backing name there, and
/// the encryption context the name stands for.
#[derive(Debug, Clone, Copy)]
pub struct RenameEnd<'a> {
    /// The backing directory.
    pub dir: BorrowedFd<'a>,
    /// The backing name in it.
    pub name: &'a BackingName,
    /// The context (parent directory id + plaintext name) it binds to.
    pub ctx: &'a EncryptionContext<'a>,
}

/// How a rename behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenameOptions {
    /// Both ends are in the same directory (the caller knows; a rename onto
    /// the same name is then a no-op).
    pub same_dir: bool,
    /// Never replace an existing target (`RENAME_NOREPLACE`): `EEXIST`.
    pub noreplace: bool,
    /// Make everything durable before returning (fsck's salvage): the moved
    /// file's header, and both parent directories.
    pub durable: bool,
}

/// A target a rename replaced.
#[derive(Debug)]
pub struct Replaced {
    /// Its attributes, taken before the rename.
    pub st: libc::stat,
    /// A replaced regular file (another inode than the moved one), pinned
    /// so its blocks can be freed off the caller's request path.
    pub fd: Option<OwnedFd>,
}

/// What a rename did.
#[derive(Debug)]
pub struct Renamed {
    /// The moved object's attributes (before the rename).
    pub moved: libc::stat,
    /// The target it replaced, if any (not for a rename onto itself).
    pub replaced: Option<Replaced>,
}

/// Renames `from` to `to`, re-binding a file's or directory's key to the
/// new context with the two-slot sequence of docs/FORMAT.md §6, so a crash
/// at any instant leaves the object readable under its old or its new
/// name. A target of the same kind is replaced (an empty directory only,
/// `ENOTEMPTY` otherwise; `ENOTDIR`/`EISDIR` across kinds), after every
/// step that can fail for lack of space, so a failed rename leaves it
/// intact. `Ok(None)`: a rename onto the same name, nothing done.
pub fn rename(
    vol: &Volume,
    from: RenameEnd<'_>,
    to: RenameEnd<'_>,
    opts: RenameOptions,
) -> Result<Option<Renamed>, VolumeError> {
    let moved = sys::fstatat(from.dir, OsStr::new(&from.name.entry))?;
    let kind = EntryKind::of_mode(moved.st_mode);
    if opts.same_dir && from.name.entry == to.name.entry {
        return Ok(None);
    }
    let target = sys::fstatat(to.dir, OsStr::new(&to.name.entry)).ok();
    if let Some(t) = &target {
        if t.st_ino == moved.st_ino && t.st_dev == moved.st_dev {
            // Two names of one file: rename(2) does nothing (and neither
            // does the backing rename), so no binding may change.
            return Ok(None);
        }
    }
    // A replaced file is freed in the background, like an unlink.
    let target_fd = match &target {
        Some(t) if EntryKind::of_mode(t.st_mode) == EntryKind::File && t.st_ino != moved.st_ino => {
            backing::pin(to.dir, OsStr::new(&to.name.entry)).ok()
        }
        _ => None,
    };
    // An empty directory being replaced: its records go just before the
    // backing rename (which needs it empty).
    let mut target_dir: Option<OwnedFd> = None;
    if let Some(t) = &target {
        if opts.noreplace {
            return Err(errno(libc::EEXIST).into());
        }
        match (kind, EntryKind::of_mode(t.st_mode)) {
            (EntryKind::Dir, EntryKind::Dir) => {
                let tfd = backing::open_dir(to.dir, OsStr::new(&to.name.entry))?;
                if !is_empty_dir(tfd.as_fd())? {
                    return Err(errno(libc::ENOTEMPTY).into());
                }
                target_dir = Some(tfd);
            }
            (EntryKind::Dir, _) => return Err(errno(libc::ENOTDIR).into()),
            (_, EntryKind::Dir) => return Err(errno(libc::EISDIR).into()),
            _ => {}
        }
    }
    // A replaced file that has other names keeps living under them: the
    // replaced name's tag leaves its link table after the rename.
    let target_linked = match &target {
        Some(t) if EntryKind::of_mode(t.st_mode) == EntryKind::File && t.st_nlink > 1 => {
            backing::open_regular(to.dir, OsStr::new(&to.name.entry), libc::O_RDWR).ok()
        }
        _ => None,
    };
    write_name_sidecar(to.dir, to.name)?;
    if let Err(e) = move_entry(vol, from, to, kind, opts, target_dir) {
        undo_name_sidecar(to.dir, to.name);
        return Err(e);
    }
    if let Some(f) = target_linked {
        if let Err(e) = vol.drop_link(&f, to.ctx) {
            tracing::warn!("rename: link table of the replaced file not updated: {e}");
        }
    }
    let same_sidecar =
        from.name.sidecar.as_ref().map(|s| &s.0) == to.name.sidecar.as_ref().map(|s| &s.0);
    if !(opts.same_dir && same_sidecar) {
        remove_name_sidecar(from.dir, from.name);
    }
    if opts.durable {
        sys::fsync_dir(to.dir)?;
        sys::fsync_dir(from.dir)?;
    }
    Ok(Some(Renamed {
        moved,
        replaced: target.map(|st| Replaced { st, fd: target_fd }),
    }))
}

/// The steps of a rename after the checks: re-bind the key of a file or
/// directory to its new context around the backing rename (removing the
/// records of a replaced empty directory `target_dir` just before it).
fn move_entry(
    vol: &Volume,
    from: RenameEnd<'_>,
    to: RenameEnd<'_>,
    kind: EntryKind,
    opts: RenameOptions,
    target_dir: Option<OwnedFd>,
) -> Result<(), VolumeError> {
    let src = OsStr::new(&from.name.entry);
    let flags = if opts.noreplace {
        libc::RENAME_NOREPLACE
    } else {
        0
    };
    let backing_rename = || -> io::Result<()> {
        if let Some(t) = &target_dir {
            remove_dir_records(t.as_fd());
        }
        sys::renameat2(from.dir, src, to.dir, OsStr::new(&to.name.entry), flags)
    };
    match kind {
        EntryKind::File => {
            let f = backing::open_regular(from.dir, src, libc::O_RDWR)?;
            // 1. A slot for the new context beside the old one (a linked
            // file: the new name's tag), durably.
            let rec = vol
                .begin_rebind_file(&f, from.ctx, to.ctx)
                .inspect_err(|e| tracing::warn!("rename: cannot re-bind file header: {e}"))?;
            // 2. The backing rename, durable before step 3: a power loss
            // must not leave the file at its old name with a header that
            // opens only under the new one.
            crate::keyring::kill_point("rename-file-rebound");
            backing_rename()?;
            crate::keyring::kill_point("rename-file-moved");
            match sys::fsync_dir(to.dir) {
                // 3. The old slot (or a linked file's old tag) goes.
                Ok(()) => {
                    if let Err(e) = vol.finish_rebind_file(&f, rec, to.ctx) {
                        tracing::warn!("rename: old header slot not cleared: {e}");
                    }
                }
                Err(e) => tracing::warn!("rename: directory not synced, old slot kept: {e}"),
            }
            if opts.durable {
                f.sync_data()?;
            }
        }
        EntryKind::Dir => {
            let dfd = backing::open_dir(from.dir, src)?;
            let d = vol.load_dir(dfd.as_fd(), from.ctx)?;
            vol.begin_rebind_dir(dfd.as_fd(), &d, from.ctx, to.ctx)?;
            backing_rename()?;
            // As for files: the durable drop of the old slot must not reach
            // the disk before the rename does (the whole subtree would be
            // lost with it).
            match sys::fsync_dir(to.dir) {
                Ok(()) => {
                    if let Err(e) = vol.finish_rebind_dir(dfd.as_fd(), &d, to.ctx) {
                        tracing::warn!("rename: old directory slot not cleared: {e}");
                    }
                }
                Err(e) => tracing::warn!("rename: directory not synced, old slot kept: {e}"),
            }
        }
        // Symlinks, FIFOs, sockets and devices carry no key.
        EntryKind::Symlink | EntryKind::Other => backing_rename()?,
    }
    Ok(())
}

// ------------------------------------------------------------ linking

/// Gives the existing non-directory `from` the additional name `to` (a
/// hard link), both ends standing for their contexts. A regular file is
/// made openable as `to` durably before the backing `linkat`
/// ([`Volume::begin_link`]), so a crash leaves it reachable under its old
/// name and, once the link is durable, the new one; symlinks and special
/// nodes carry no key and are linked as they are. `EEXIST` if `to`
/// exists, `EPERM` for a directory, `EMLINK` when the file has as many
/// names as its table can hold. Returns the linked object's attributes
/// (after the link).
pub fn link(
    vol: &Volume,
    from: RenameEnd<'_>,
    to: RenameEnd<'_>,
) -> Result<libc::stat, VolumeError> {
    let src = OsStr::new(&from.name.entry);
    let dst = OsStr::new(&to.name.entry);
    let st = sys::fstatat(from.dir, src)?;
    let kind = EntryKind::of_mode(st.st_mode);
    if kind == EntryKind::Dir {
        return Err(errno(libc::EPERM).into());
    }
    match sys::fstatat(to.dir, dst) {
        Ok(_) => return Err(errno(libc::EEXIST).into()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    if kind != EntryKind::File {
        write_name_sidecar(to.dir, to.name)?;
        if let Err(e) = sys::linkat(from.dir, src, to.dir, dst) {
            undo_name_sidecar(to.dir, to.name);
            return Err(e.into());
        }
        return Ok(sys::fstatat(to.dir, dst)?);
    }
    let f = backing::open_regular(from.dir, src, libc::O_RDWR)?;
    write_name_sidecar(to.dir, to.name)?;
    let step = match vol.begin_link(&f, from.ctx, to.ctx) {
        Ok(step) => step,
        Err(e) => {
            undo_name_sidecar(to.dir, to.name);
            return Err(e);
        }
    };
    crate::keyring::kill_point("link-table-stored");
    let made = sys::linkat(from.dir, src, to.dir, dst);
    if made.is_ok() {
        crate::keyring::kill_point("link-made");
    }
    if made.is_err() {
        undo_name_sidecar(to.dir, to.name);
    }
    if let Err(e) = vol.finish_link(&f, step, to.ctx, made.is_ok()) {
        tracing::warn!("link: header not finished: {e}");
    }
    made?;
    Ok(sys::fstat(f.as_fd())?)
}
