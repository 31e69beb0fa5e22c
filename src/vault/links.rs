//! Hard links and extended attributes through the library (no mount):
//! the same steps as the FUSE frontend (docs/FORMAT.md §4.6, §9.1).
//!
//! Owns: resolving the paths and keys these calls need.
//! Must never: store an attribute unencrypted, or log names or values.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::format::config::FEATURE_XATTRS;
use crate::format::header::EncryptionContext;
use crate::format::xattrs::{Owner, XattrCipher};
use crate::volume::backing;
use crate::volume::namespace::{self, RenameEnd};
use crate::volume::xattrs::Attrs;
use crate::volume::VolumeError;

use super::{components, is_kind, path_err, OpenDir, Vault, VaultError};

/// Where an object's attributes live: its backing directory and entry
/// ("" for a directory itself) and its keys.
struct AttrTarget {
    dir: OpenDir,
    entry: std::ffi::OsString,
    cipher: XattrCipher,
}

impl Vault {
    /// Makes `dst` a new name of the file (or symlink, FIFO, …) at `src`
    /// (`link(2)`): the file's link table lists both names, durably,
    /// before the backing link exists. Needs the `hard-links` feature.
    pub fn hard_link(&self, src: &Path, dst: &Path) -> Result<(), VaultError> {
        self.check_writable()?;
        let (sp, sbn, sname) = self.locate(src)?;
        let (dp, dbn, dname) = self.locate(dst)?;
        let sctx = EncryptionContext {
            parent_dir_id: sp.dir.id,
            name: sname.as_bytes(),
        };
        let dctx = EncryptionContext {
            parent_dir_id: dp.dir.id,
            name: dname.as_bytes(),
        };
        let _ns = self.vol.namespace().write();
        namespace::link(
            &self.vol,
            RenameEnd {
                dir: sp.fd.as_fd(),
                name: &sbn,
                ctx: &sctx,
            },
            RenameEnd {
                dir: dp.fd.as_fd(),
                name: &dbn,
                ctx: &dctx,
            },
        )
        .map_err(|e| match e {
            VolumeError::Io(io) => path_err(io, src),
            e => e.into(),
        })?;
        Ok(())
    }

    /// The attributes of the file or directory at `path` ("" or "/": the
    /// root). Symlinks and special nodes are not reached here.
    fn attr_target(&self, path: &Path) -> Result<AttrTarget, VaultError> {
        self.check_enabled()?;
        if !self.vol.config().has_feature(FEATURE_XATTRS) {
            return Err(VolumeError::FeatureMissing(FEATURE_XATTRS).into());
        }
        if components(path)?.is_empty() {
            let root = self.root()?;
            let cipher = root.dir.xattr_cipher();
            return Ok(AttrTarget {
                dir: root,
                entry: "".into(),
                cipher,
            });
        }
        let (parent, bn, name) = self.locate(path)?;
        let entry = OsStr::new(&bn.entry);
        let st = backing::stat(parent.fd.as_fd(), entry).map_err(|e| path_err(e, path))?;
        if is_kind(&st, libc::S_IFDIR) {
            let child = self.child_dir(&parent, name, path)?;
            let cipher = child.dir.xattr_cipher();
            return Ok(AttrTarget {
                dir: child,
                entry: "".into(),
                cipher,
            });
        }
        if !is_kind(&st, libc::S_IFREG) {
            return Err(VaultError::NotAFile(path.to_path_buf()));
        }
        let f = backing::open_regular(parent.fd.as_fd(), entry, libc::O_RDONLY)
            .map_err(|e| path_err(e, path))?;
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let h = self.vol.open_header(&f, &ctx)?;
        let cipher = XattrCipher::new(&h.key, h.rec.id, Owner::File);
        Ok(AttrTarget {
            entry: bn.entry.into(),
            dir: parent,
            cipher,
        })
    }

    fn with_attrs<T>(
        &self,
        path: &Path,
        f: impl FnOnce(&Attrs<'_>) -> Result<T, VolumeError>,
    ) -> Result<T, VaultError> {
        let t = self.attr_target(path)?;
        let attrs = Attrs {
            dir: t.dir.fd.as_fd(),
            entry: &t.entry,
            cipher: &t.cipher,
        };
        Ok(f(&attrs)?)
    }

    /// The value of extended attribute `name` of the file or directory at
    /// `path`, or None.
    pub fn get_xattr(&self, path: &Path, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
        self.with_attrs(path, |a| a.get(name.as_bytes()))
    }

    /// Sets extended attribute `name` (flags: 0, `XATTR_CREATE` or
    /// `XATTR_REPLACE`).
    pub fn set_xattr(
        &self,
        path: &Path,
        name: &str,
        value: &[u8],
        flags: i32,
    ) -> Result<(), VaultError> {
        self.check_writable()?;
        self.with_attrs(path, |a| a.set(name.as_bytes(), value, flags))
    }

    /// Removes extended attribute `name`.
    pub fn remove_xattr(&self, path: &Path, name: &str) -> Result<(), VaultError> {
        self.check_writable()?;
        self.with_attrs(path, |a| a.remove(name.as_bytes()))
    }

    /// The names of the extended attributes of the file or directory at
    /// `path`, sorted.
    pub fn list_xattrs(&self, path: &Path) -> Result<Vec<String>, VaultError> {
        self.with_attrs(path, |a| a.list()).map(|v| {
            v.into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .collect()
        })
    }
}
