//! fsck's orphans: backing entries no directory record accounts for. Each
//! is tried against every directory's name key, so ciphertext moved between
//! directories is recognised with its original plaintext path; salvage
//! moves it into `lost+found` (re-bound to its new place with the rename of
//! [`crate::volume::namespace`]), or seals an unrecognised file's raw bytes
//! into a new file `raw-…` there.
//!
//! Owns: recognising orphans, `lost+found`, and the names things get there.
//! Must never: move or remove an entry that checked clean, or decide a
//! namespace step order of its own (namespace does).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::format::header::EncryptionContext;
use crate::format::reserved;
use crate::sys;
use crate::volume::backing::{self, EntryKind};
use crate::volume::namespace::{self, RenameEnd, RenameOptions};
use crate::volume::{Directory, VolumeError};

use super::{join, plain, Checker, KnownDir, ProblemKind, LOST_FOUND};

/// A backing entry no directory record accounts for.
pub(super) struct Orphan {
    /// Backing path of its directory, relative to CIPHERDIR.
    pub(super) parent_rel: PathBuf,
    /// Plaintext path of its directory, if known.
    pub(super) parent_plain: Option<Vec<u8>>,
    /// Backing entry name.
    pub(super) entry: String,
    /// The full encoded name, if there is one to try.
    pub(super) encoded: Option<String>,
    pub(super) kind: EntryKind,
    pub(super) why: String,
}

/// Where an orphan went in lost+found: its new plaintext name, and its
/// backing entry and kind if it should be checked there.
type Moved = (Vec<u8>, Option<(String, EntryKind)>);

impl Checker<'_> {
    pub(super) fn lost_found(&mut self) -> Result<(BorrowedFd<'_>, &Directory), VolumeError> {
        if self.lost_found.is_none() {
            let root = self.root_dir.clone().ok_or(VolumeError::DirRecordLost)?;
            let rfd = self.root.as_fd();
            let name = LOST_FOUND.as_bytes();
            let bn = root.names.encrypt_name(name)?;
            let ctx = EncryptionContext {
                parent_dir_id: root.id,
                name,
            };
            let (fd, dir) = match backing::open_dir(rfd, OsStr::new(&bn.entry)) {
                Ok(fd) => {
                    let d = self.vol.load_dir(fd.as_fd(), &ctx)?;
                    (fd, d)
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => namespace::create_dir(
                    rfd, &bn, 0o700,
                )?
                .finish_dir_durably(self.vol, &ctx, self.vol.keyring().read().default_key_id())?,
                Err(e) => return Err(e.into()),
            };
            self.dirs.push(KnownDir {
                id: dir.id,
                names: dir.names.clone(),
                path: name.to_vec(),
            });
            self.lost_found = Some((fd, dir));
        }
        let (fd, dir) = self.lost_found.as_ref().expect("set above");
        Ok((fd.as_fd(), dir))
    }

    /// A free name in lost+found based on `want`, with its backing name.
    pub(super) fn free_name(
        &mut self,
        want: &[u8],
    ) -> Result<(Vec<u8>, crate::format::names::BackingName), VolumeError> {
        let (fd, dir) = self.lost_found()?;
        let base: Vec<u8> = want.iter().copied().take(200).collect();
        for n in 0u32.. {
            let mut name = base.clone();
            if n > 0 {
                name.extend_from_slice(format!("~{n}").as_bytes());
            }
            let bn = dir.names.encrypt_name(&name)?;
            match backing::stat(fd, OsStr::new(&bn.entry)) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((name, bn)),
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        unreachable!("u32 names run out")
    }

    pub(super) fn handle_orphans(&mut self) {
        // Checking a recognised orphan directory may find more orphans.
        while !self.orphans.is_empty() {
            let batch = std::mem::take(&mut self.orphans);
            for o in batch {
                self.handle_orphan(o);
            }
        }
    }

    pub(super) fn handle_orphan(&mut self, o: Orphan) {
        {
            let rel = o.parent_rel.join(&o.entry);
            // Which directory's name key does the name decrypt under?
            let found = o.encoded.as_deref().and_then(|enc| {
                self.dirs.iter().find_map(|d| {
                    d.names
                        .decrypt_name(enc)
                        .ok()
                        .map(|n| (d.id, d.path.clone(), n))
                })
            });
            let parent = match backing::open_dir_under(self.root.as_fd(), &o.parent_rel) {
                Ok(fd) => fd,
                Err(e) => {
                    self.problem(ProblemKind::Io, None, &o.parent_rel, format!("open: {e}"));
                    return;
                }
            };
            let (orig_path, opens) = match &found {
                Some((id, dpath, name)) => {
                    let ctx = EncryptionContext {
                        parent_dir_id: *id,
                        name,
                    };
                    let opens = self.orphan_opens(parent.as_fd(), &o, &ctx);
                    (Some(join(dpath, name)), opens)
                }
                None => (None, false),
            };
            let mut msg = match &o.parent_plain {
                Some(p) if orig_path.is_none() => format!("in directory {}: {}", plain(p), o.why),
                _ => o.why.clone(),
            };
            if let Some(p) = &orig_path {
                msg.push_str(&format!(
                    "; it is the ciphertext of {}{}",
                    plain(p),
                    if opens {
                        ""
                    } else {
                        " (but its key does not open there)"
                    }
                ));
            }
            let i = self.problem(ProblemKind::Orphan, orig_path.as_deref(), &rel, msg);
            if !self.salvage {
                // Check what can be checked where it lies.
                if let (Some((id, _, name)), true) = (&found, opens) {
                    let ctx = EncryptionContext {
                        parent_dir_id: *id,
                        name,
                    };
                    let p = orig_path.clone().unwrap_or_default();
                    self.check_entry(parent.as_fd(), &o.entry, o.kind, &ctx, &p, &rel);
                }
                return;
            }
            let r = match (&found, opens) {
                (Some((id, _, name)), true) => {
                    let old = EncryptionContext {
                        parent_dir_id: *id,
                        name,
                    };
                    self.move_recognised(parent.as_fd(), &o, &old, name)
                }
                _ if o.kind == EntryKind::File => self.copy_raw(parent.as_fd(), &o),
                _ if o.kind == EntryKind::Dir => {
                    self.unrepairable(
                        i,
                        "a directory whose record does not open: its names are lost; left in place",
                    );
                    return;
                }
                _ => self.move_keyless(parent.as_fd(), &o),
            };
            match r {
                Ok((dest, then_check)) => {
                    let msg = format!("moved to /{LOST_FOUND}/{}", String::from_utf8_lossy(&dest));
                    self.record_repair(i, Ok::<(), VolumeError>(()), &msg);
                    if let Some((entry, kind)) = then_check {
                        self.check_moved(&dest, &entry, kind);
                    }
                }
                Err(e) => self.record_repair(i, Err(e), ""),
            }
        }
    }

    /// Whether an orphan's header or record opens for `ctx`.
    pub(super) fn orphan_opens(
        &self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
        ctx: &EncryptionContext<'_>,
    ) -> bool {
        match o.kind {
            EntryKind::File => backing::open_regular(parent, OsStr::new(&o.entry), libc::O_RDONLY)
                .ok()
                .is_some_and(|f| self.vol.open_header(&f, ctx).is_ok()),
            EntryKind::Dir => backing::open_dir(parent, OsStr::new(&o.entry))
                .ok()
                .is_some_and(|fd| self.vol.load_dir(fd.as_fd(), ctx).is_ok()),
            EntryKind::Symlink | EntryKind::Other => true,
        }
    }

    /// Moves a recognised orphan into lost+found under its own name,
    /// re-binding its key (the rename of docs/FORMAT.md §6, made durable).
    /// Returns its new name, and its backing entry and kind to check there.
    pub(super) fn move_recognised(
        &mut self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
        old: &EncryptionContext<'_>,
        name: &[u8],
    ) -> Result<Moved, VolumeError> {
        self.move_to_lost_found(parent, o, Some(old), name)
    }

    /// Moves a symlink or special file (no key) into lost+found as `orphan-…`.
    pub(super) fn move_keyless(
        &mut self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
    ) -> Result<Moved, VolumeError> {
        let want = format!("orphan-{}", short(&o.entry));
        self.move_to_lost_found(parent, o, None, want.as_bytes())
    }

    /// Renames the orphan `o` of `parent` into lost+found, under a free
    /// name based on `want`; `old` is the context its key opens under
    /// (`None` for a keyless node).
    pub(super) fn move_to_lost_found(
        &mut self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
        old: Option<&EncryptionContext<'_>>,
        want: &[u8],
    ) -> Result<Moved, VolumeError> {
        let (new_name, bn) = self.free_name(want)?;
        let vol = self.vol;
        let (lf, dir) = self.lost_found()?;
        let new = EncryptionContext {
            parent_dir_id: dir.id,
            name: &new_name,
        };
        let src = namespace::existing_entry(&o.entry, o.encoded.as_deref());
        namespace::rename(
            vol,
            RenameEnd {
                dir: parent,
                name: &src,
                // A keyless node has no key to re-bind.
                ctx: old.unwrap_or(&new),
            },
            RenameEnd {
                dir: lf,
                name: &bn,
                ctx: &new,
            },
            RenameOptions {
                same_dir: false,
                noreplace: true,
                durable: true,
            },
        )?;
        Ok((new_name, Some((bn.entry, o.kind))))
    }

    /// Stores an unrecognised file's raw bytes as a new sealfs file
    /// `raw-…` in lost+found (staged under a temp name, synced, renamed in
    /// place, fsync), then removes the orphan.
    pub(super) fn copy_raw(
        &mut self,
        parent: BorrowedFd<'_>,
        o: &Orphan,
    ) -> Result<Moved, VolumeError> {
        let src = backing::open_regular(parent, OsStr::new(&o.entry), libc::O_RDONLY)?;
        let want = format!("raw-{}", short(&o.entry));
        let (new_name, bn) = self.free_name(want.as_bytes())?;
        let vol = self.vol;
        let (lf, dir) = self.lost_found()?;
        let ctx = EncryptionContext {
            parent_dir_id: dir.id,
            name: &new_name,
        };
        let tmp = reserved::salvage_name(std::process::id());
        sys::remove_stale_regular(lf, OsStr::new(&tmp))?;
        let mut sealed = namespace::create_staged(
            vol,
            lf,
            &tmp,
            &ctx,
            (0o600, vol.keyring().read().default_key_id()),
        )?;
        let result = (|| {
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let n = std::os::unix::fs::FileExt::read_at(&src, &mut buf, off)?;
                if n == 0 {
                    break;
                }
                sealed.write(off, &buf[..n])?;
                off += n as u64;
            }
            sealed.backing().sync_all()?;
            namespace::commit_staged(lf, &tmp, &bn, true)?;
            backing::sync_dir(lf)?;
            let orphan = namespace::existing_entry(&o.entry, o.encoded.as_deref());
            namespace::unlink(parent, &orphan)?;
            backing::sync_dir(parent)?;
            Ok::<_, VolumeError>(())
        })();
        if result.is_err() {
            namespace::discard_staged(lf, &tmp);
        }
        result?;
        Ok((new_name, None))
    }

    /// Checks (and salvages) an entry just moved into lost+found.
    pub(super) fn check_moved(&mut self, name: &[u8], entry: &str, kind: EntryKind) {
        let Ok((lf, dir)) = self.lost_found() else {
            return;
        };
        let (Ok(lf), id) = (
            sys::openat(lf, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY, 0),
            dir.id,
        ) else {
            return;
        };
        let ctx = EncryptionContext {
            parent_dir_id: id,
            name,
        };
        let path = join(LOST_FOUND.as_bytes(), name);
        let rel = lost_found_rel(self, entry);
        self.check_entry(lf.as_fd(), entry, kind, &ctx, &path, &rel);
    }
}

fn lost_found_rel(c: &Checker<'_>, entry: &str) -> PathBuf {
    let lf_entry = c
        .root_dir
        .as_ref()
        .and_then(|r| r.names.encrypt_name(LOST_FOUND.as_bytes()).ok())
        .map(|b| b.entry)
        .unwrap_or_else(|| LOST_FOUND.into());
    Path::new(&lf_entry).join(entry)
}

/// A short, name-safe tag for an orphan's backing name.
fn short(entry: &str) -> String {
    entry
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect()
}
