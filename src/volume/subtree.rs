//! Named keys as the volume sees them (issue 22): which key a subtree's
//! new entries get (a plaintext path resolved to the ids of its
//! directories, and the nearest assigned ancestor among them), the
//! wrapping of a given key, and the lock-free checks a mount makes per
//! request (a key's state, a key's policy, the key version a cached
//! directory's record has now).
//!
//! Owns: resolving a plaintext directory path to its chain of directory
//! ids (root first), the rule "the nearest assigned ancestor wins; none:
//! the default key", and "a rename or rewrap keeps an entry's key".
//! Must never: change the keyring (key policy assigns), or follow a
//! backing symlink.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use crate::format::header::{EncryptionContext, RecordKind, SealedRecord};
use crate::volume::content::read_header;
use crate::volume::{backing, read_record_copy, Volume, VolumeError, DIR_RECORD};

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

    /// Whether data under master key version `version` may be used now
    /// (its key enabled, not pending deletion, not expired). Version 0
    /// (not known) passes: opening its header decides.
    pub fn version_usable(&self, version: u32) -> bool {
        if version == 0
            || !self
                .keys_restricted
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return true;
        }
        self.keyring.read().version_usable(version)
    }

    /// The master key version directory `d`'s record is wrapped under now:
    /// its version when loaded, unless a rewrap (or a rename during a
    /// rotation) has moved the record since. Without any such move since
    /// the volume opened this is one atomic load.
    pub fn dir_key_version(&self, d: &crate::volume::Directory) -> u32 {
        if !self
            .any_dir_rewrapped
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return d.key_version;
        }
        self.rewrapped_dirs
            .read()
            .get(&d.id)
            .copied()
            .unwrap_or(d.key_version)
    }

    /// The master key version the record of `entry` in `dir` is wrapped
    /// under (a file's header, a directory's record; an empty `entry`:
    /// `dir`'s own record), read from the clear slot metadata without
    /// unwrapping anything. `None` for a symlink or special file (they
    /// have no record) or a record that does not decode.
    pub fn entry_key_version(&self, dir: BorrowedFd<'_>, entry: &OsStr) -> Option<u32> {
        let (buf, kind) = if entry.is_empty() {
            (read_record_copy(dir, DIR_RECORD).ok()?, RecordKind::Dir)
        } else if let Ok(f) = backing::open_regular(dir, entry, libc::O_RDONLY) {
            (read_header(&f).ok()?, RecordKind::File)
        } else {
            let fd = backing::open_dir(dir, entry).ok()?;
            (
                read_record_copy(fd.as_fd(), DIR_RECORD).ok()?,
                RecordKind::Dir,
            )
        };
        let rec = SealedRecord::decode(kind, &buf).ok()?;
        rec.slots.iter().flatten().next().map(|s| s.key_version)
    }

    /// Notes that directory `id`'s record is now wrapped under `version`
    /// (see [`Volume::dir_key_version`]).
    pub(crate) fn note_dir_key_version(&self, id: [u8; 16], version: u32) {
        self.rewrapped_dirs.write().insert(id, version);
        self.any_dir_rewrapped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether any key has a policy (one atomic load).
    pub fn has_key_policies(&self) -> bool {
        self.key_policies.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The policy of the key owning `version`, if some key has a policy
    /// and this one does (`None`: decided as before policies).
    pub fn key_policy_of_version(
        &self,
        version: u32,
    ) -> Option<std::sync::Arc<crate::policy::key_policy::KeyPolicy>> {
        if !self.key_policies.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.keyring.read().policy_of_version(version).cloned()
    }

    /// The primary version of key `key` and its wrapping cipher for `kind`.
    pub(crate) fn key_wrapper(
        &self,
        key: u32,
        kind: RecordKind,
    ) -> Result<(u32, crate::crypto::SealingKey), VolumeError> {
        let kr = self.keyring.read();
        let v = kr.primary_of(key).ok_or(VolumeError::KeyUnavailable)?;
        let w = kr.wrapper(v, kind).ok_or(VolumeError::KeyUnavailable)?;
        crate::metrics::key_use(crate::metrics::KeyUse::Wrap, v);
        Ok((v, w))
    }

    /// The wrapping of the key that owns `version` (its primary version):
    /// a rename or a rewrap of one key's entry stays with that key.
    pub(crate) fn same_key_wrapper(
        &self,
        version: u32,
        kind: RecordKind,
    ) -> Result<(u32, crate::crypto::SealingKey), VolumeError> {
        let key = {
            let kr = self.keyring.read();
            kr.key_of_version(version)
                .map_or(kr.default_key_id(), |k| k.id)
        };
        self.key_wrapper(key, kind)
    }
}
