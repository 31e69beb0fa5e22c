//! Encrypted extended attributes on backing objects (docs/FORMAT.md §9.1):
//! one backing xattr per attribute, named and sealed by the object's
//! [`XattrCipher`]. The backing filesystem must store `user.*` xattrs on
//! files and directories (and, for symlinks and special nodes, `trusted.*`,
//! which needs a daemon with CAP_SYS_ADMIN); [`backing_supports`] says
//! whether it does.
//!
//! Owns: reading, writing, listing and removing an object's sealed
//! attributes, the keys of each kind of object ([`Directory`]'s), and
//! the ids of keyless nodes.
//! Must never: decide who may see an attribute (the frontend asks
//! [`crate::policy`]), or log names or values.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;

use crate::format::xattrs::{
    check_name, Owner, XattrCipher, NODE_ID_XATTR, TRUSTED_PREFIX, USER_PREFIX,
};
use crate::sys;
use crate::volume::{Directory, VolumeError};

/// Backing xattr names of sealfs's own attributes start with one of these.
fn is_sealed(name: &[u8]) -> bool {
    name.starts_with(USER_PREFIX.as_bytes()) || name.starts_with(TRUSTED_PREFIX.as_bytes())
}

impl Directory {
    /// The attribute keys of this directory.
    pub fn xattr_cipher(&self) -> XattrCipher {
        XattrCipher::new(&self.key, self.id, Owner::Dir)
    }

    /// The attribute keys of keyless nodes (symlinks, FIFOs, sockets,
    /// devices) of a volume without `keyless-xattr-ids`: derived from the
    /// root directory's key and bound to its id (call on the root).
    pub fn keyless_xattr_cipher(&self) -> XattrCipher {
        XattrCipher::new(&self.key, self.id, Owner::Keyless)
    }

    /// The attribute keys of the keyless node whose id is `node_id`
    /// (feature `keyless-xattr-ids`; see [`keyless_node_id`]): from the
    /// root directory's key (call on the root), bound to the node.
    pub fn node_xattr_cipher(&self, node_id: [u8; 16]) -> XattrCipher {
        XattrCipher::new(&self.key, node_id, Owner::Keyless)
    }
}

/// The id of the keyless node `entry` of `dir` (its [`NODE_ID_XATTR`]):
/// None if it has none yet; with `create`, a new random one is stored
/// first (before any attribute sealed under it). A value of another
/// length is an integrity failure (EIO).
pub fn keyless_node_id(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    create: bool,
) -> io::Result<Option<[u8; 16]>> {
    let eio = || io::Error::from_raw_os_error(libc::EIO);
    if let Some(v) = sys::get_xattr(dir, entry, NODE_ID_XATTR)? {
        return v.try_into().map(Some).map_err(|_| eio());
    }
    if !create {
        return Ok(None);
    }
    let mut id = [0u8; 16];
    crate::crypto::fill_random(&mut id).map_err(|_| eio())?;
    match sys::set_xattr(dir, entry, NODE_ID_XATTR, &id, libc::XATTR_CREATE) {
        Ok(()) => Ok(Some(id)),
        // Made meanwhile by another request: that one counts.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => keyless_node_id(dir, entry, false),
        Err(e) => Err(e),
    }
}

/// The sealed attributes of one backing object: `entry` of the backing
/// directory `dir` (`dir` itself for an empty entry).
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    /// The backing directory.
    pub dir: BorrowedFd<'a>,
    /// The entry in it (empty: the directory itself).
    pub entry: &'a OsStr,
    /// The object's keys.
    pub cipher: &'a XattrCipher,
}

impl Attrs<'_> {
    /// The value of attribute `name`, or None.
    pub fn get(&self, name: &[u8]) -> Result<Option<Vec<u8>>, VolumeError> {
        check_name(name)?;
        let backing = self.cipher.backing_name(name);
        let Some(sealed) = sys::get_xattr(self.dir, self.entry, &backing)? else {
            return Ok(None);
        };
        Ok(Some(self.cipher.open_named(name, &sealed)?))
    }

    /// Sets attribute `name` to `value`; `flags` as setxattr(2):
    /// `XATTR_CREATE` fails with EEXIST if it exists, `XATTR_REPLACE` with
    /// ENODATA if it does not.
    pub fn set(&self, name: &[u8], value: &[u8], flags: i32) -> Result<(), VolumeError> {
        let sealed = self.cipher.seal(name, value)?;
        let backing = self.cipher.backing_name(name);
        sys::set_xattr(self.dir, self.entry, &backing, &sealed, flags)?;
        Ok(())
    }

    /// Removes attribute `name` (ENODATA if absent).
    pub fn remove(&self, name: &[u8]) -> Result<(), VolumeError> {
        check_name(name)?;
        let backing = self.cipher.backing_name(name);
        sys::remove_xattr(self.dir, self.entry, &backing)?;
        Ok(())
    }

    /// The names of the object's attributes. An attribute that does not
    /// open is an integrity failure.
    pub fn list(&self) -> Result<Vec<Vec<u8>>, VolumeError> {
        let mut out = Vec::new();
        let prefix = self.cipher.prefix().as_bytes();
        for b in sys::list_xattrs(self.dir, self.entry)? {
            if !b.starts_with(prefix) {
                continue;
            }
            let backing = String::from_utf8_lossy(&b).into_owned();
            let Some(sealed) = sys::get_xattr(self.dir, self.entry, &backing)? else {
                continue; // removed meanwhile
            };
            let (name, _) = self.cipher.open(&backing, &sealed)?;
            out.push(name);
        }
        out.sort();
        Ok(out)
    }
}

/// Whether `entry` of `dir` carries any sealed attribute (cheap: one
/// listxattr, no key needed).
pub fn has_sealed(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<bool> {
    Ok(sys::list_xattrs(dir, entry)?.iter().any(|n| is_sealed(n)))
}

/// Whether the filesystem holding `dir` stores `user.*` xattrs (a read of
/// an absent attribute answers ENODATA there, EOPNOTSUPP elsewhere).
pub fn backing_supports(dir: BorrowedFd<'_>) -> bool {
    !matches!(
        sys::get_xattr(dir, OsStr::new(""), "user.sealfs.probe"),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP)
    )
}
