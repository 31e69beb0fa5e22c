//! The mount root's presented attributes (mode, owner, group), stored
//! sealed in `sealfs.root` (format: [`crate::format::rootattrs`],
//! docs/FORMAT.md §5.1) instead of being the cipher directory's own: so
//! CIPHERDIR itself stays mode 0700 (nobody else can list it or read the
//! keyring's KDF target) while the mount's root shows what `init` gave it
//! or `chmod`/`chown` set on it. A volume without the file (made before
//! it existed) presents the cipher directory's attributes, as it always
//! did, until a `chmod` or `chown` of the root writes the file.
//!
//! Owns: reading, writing and applying `sealfs.root`; the attributes a new
//! volume's root starts with.
//! Must never: change the cipher directory's own mode or owner.

use std::ffi::OsStr;
use std::io;

use crate::format::reserved::ROOT_ATTRS_FILE;
pub use crate::format::rootattrs::RootAttrs;
use crate::sys;

use super::{Directory, Volume, VolumeError};

/// File mode of `sealfs.root`.
pub const ROOT_ATTRS_MODE: u32 = 0o600;

/// This process's umask (from /proc/self/status; 022 if unknown).
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|u| u32::from_str_radix(u.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// The attributes a new volume's root starts with: what `mkdir` would give
/// a directory made by this process (mode 0777 less the umask, the
/// process's user and group).
pub fn new_root_attrs() -> RootAttrs {
    // SAFETY: geteuid/getegid have no failure mode.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    RootAttrs {
        mode: 0o777 & !current_umask(),
        uid,
        gid,
    }
}

impl Volume {
    /// The root's stored attributes; `None` when the volume has no
    /// `sealfs.root` (the cipher directory's own attributes apply).
    pub fn root_attrs(&self, root: &Directory) -> Result<Option<RootAttrs>, VolumeError> {
        let bytes = match sys::read_regular(self.root(), OsStr::new(ROOT_ATTRS_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(RootAttrs::open(
            &bytes,
            &root.key,
            &self.volume_id(),
            &root.id,
        )?))
    }

    /// Stores the root's attributes durably (write-new-then-rename).
    pub fn store_root_attrs(&self, root: &Directory, a: &RootAttrs) -> Result<(), VolumeError> {
        self.check_writable()?;
        let bytes = a.seal(&root.key, &self.volume_id(), &root.id)?;
        sys::write_durably(self.root(), ROOT_ATTRS_FILE, &bytes, ROOT_ATTRS_MODE)?;
        Ok(())
    }

    /// Changes the root's mode, owner and/or group: starting from the
    /// stored attributes, or from the cipher directory's own (`st`) when
    /// none are stored yet. Returns the new attributes.
    pub fn change_root_attrs(
        &self,
        root: &Directory,
        st: &libc::stat,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<RootAttrs, VolumeError> {
        let mut a = self.root_attrs(root)?.unwrap_or(RootAttrs {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        });
        if let Some(m) = mode {
            a.mode = m & 0o7777;
        }
        if let Some(u) = uid {
            a.uid = u;
        }
        if let Some(g) = gid {
            a.gid = g;
        }
        self.store_root_attrs(root, &a)?;
        // The group and the set-group-ID bit are mirrored onto the cipher
        // directory (whose mode stays what it is, 0700 for a new volume):
        // new entries in the root then get the group the backing
        // filesystem gives, as a set-group-ID root demands.
        let want = (st.st_mode & 0o7777 & !libc::S_ISGID) | (a.mode & libc::S_ISGID);
        let mirrored = (if a.gid != st.st_gid {
            sys::fchownat(self.root(), OsStr::new(""), None, Some(a.gid))
        } else {
            Ok(())
        })
        .and_then(|()| {
            if want != st.st_mode & 0o7777 {
                sys::fchmodat(self.root(), OsStr::new(""), want)
            } else {
                Ok(())
            }
        });
        if let Err(e) = mirrored {
            tracing::warn!("cannot give the cipher directory the root's group: {e}");
        }
        Ok(a)
    }
}

/// `st` (the cipher directory's) with the root's presented attributes.
pub fn present(a: Option<&RootAttrs>, st: &mut libc::stat) {
    if let Some(a) = a {
        st.st_mode = (st.st_mode & libc::S_IFMT) | a.mode;
        st.st_uid = a.uid;
        st.st_gid = a.gid;
    }
}
