//! Which key a subtree's new entries get (issue 22): a plaintext path
//! resolved to the ids of its directories, and the nearest assigned
//! ancestor among them.
//!
//! Owns: resolving a plaintext directory path to its chain of directory
//! ids (root first), and the rule "the nearest assigned ancestor wins;
//! none: the default key".
//! Must never: change the keyring (key policy assigns), or follow a
//! backing symlink.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use crate::format::header::EncryptionContext;
use crate::volume::{backing, Volume, VolumeError};

impl Volume {
    /// The directory ids from the root to the directory at the plaintext
    /// `path` (`/`-separated, leading `/` optional; `/` is the root).
    pub fn dir_chain(&self, path: &[u8]) -> Result<Vec<[u8; 16]>, VolumeError> {
        let mut fd = self.root_fd()?;
        let mut dir = self.load_dir(fd.as_fd(), &EncryptionContext::ROOT)?;
        let mut chain = vec![dir.id];
        for name in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if name == b"." || name == b".." {
                return Err(VolumeError::Io(std::io::Error::from_raw_os_error(
                    libc::EINVAL,
                )));
            }
            let bn = dir.names.encrypt_name(name)?;
            let child = backing::open_dir(fd.as_fd(), OsStr::new(&bn.entry))?;
            let ctx = EncryptionContext {
                parent_dir_id: dir.id,
                name,
            };
            dir = self.load_dir(child.as_fd(), &ctx)?;
            chain.push(dir.id);
            fd = child;
        }
        Ok(chain)
    }

    /// The key new entries get in the directory whose chain of ids (root
    /// first) is `chain`: the nearest assigned one, else the default key.
    pub fn key_for_chain(&self, chain: &[[u8; 16]]) -> u32 {
        let kr = self.keyring().read();
        chain
            .iter()
            .rev()
            .find_map(|id| kr.assigned_key(id))
            .unwrap_or_else(|| kr.default_key_id())
    }
}
