//! Extended attributes, encrypted (docs/FORMAT.md §9.1).
//!
//! Each attribute of a volume object is one backing xattr on the object's
//! backing inode. Its backing name is a keyed tag of the plaintext name
//! (deterministic per object, so a lookup by name finds it without listing);
//! its value is sealed with a random nonce, and holds the plaintext name and
//! value; the AAD binds the object's id and the tag, so a value moved to
//! another object or renamed to another attribute fails to open.
//!
//! Keys: a file's come from its data key (salt = file id), a directory's
//! from its directory key (salt = directory id), and those of keyless nodes
//! (symlinks, FIFOs, sockets, devices) from the root directory's key under
//! their own labels. Files and directories keep their attributes under
//! `user.sealfs.x.`; keyless nodes under `trusted.sealfs.x.` (the backing
//! filesystem allows `user.*` on regular files and directories only).
//!
//! Owns: the backing names and value layout, and which plaintext names a
//! volume accepts ([`check_name`]).
//! Must never: do I/O, or log names or values.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::{random_nonce, SealingKey, SecretKey, NONCE_LEN, TAG_LEN};

/// Backing name prefix of the attributes of files and directories.
pub const USER_PREFIX: &str = "user.sealfs.x.";
/// Backing name prefix of the attributes of keyless nodes.
pub const TRUSTED_PREFIX: &str = "trusted.sealfs.x.";
/// Longest attribute name (the kernel's XATTR_NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Backing xattr holding the random 16-byte id of a symlink or special
/// node (feature `keyless-xattr-ids`): its attributes' keys and AAD are
/// bound to it. Outside the sealed prefixes: never listed as an attribute.
pub const NODE_ID_XATTR: &str = "trusted.sealfs.node";
/// Largest attribute value (the kernel's XATTR_SIZE_MAX).
pub const MAX_VALUE: usize = 65536;
/// Bytes a sealed value adds to name + value: nonce, name length, tag.
pub const OVERHEAD: usize = NONCE_LEN + 1 + TAG_LEN;
/// POSIX ACL attribute names.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL of a directory.
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
/// File capabilities.
pub const CAPABILITY: &[u8] = b"security.capability";

const TAG_BYTES: usize = 16;
const VALUE_AAD: &[u8] = b"sealfs:xattr:v1";

/// Errors of attribute handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    /// A name outside the namespaces a volume stores (EOPNOTSUPP, as ext4).
    #[error("attribute namespace not supported")]
    Unsupported,
    /// An empty name, or one longer than [`MAX_NAME`] (ERANGE).
    #[error("attribute name empty or too long")]
    BadName,
    /// A value larger than [`MAX_VALUE`] (E2BIG).
    #[error("attribute value too large")]
    TooBig,
    /// The sealed value does not open for this object and name: moved,
    /// renamed or tampered.
    #[error("attribute does not authenticate")]
    Tampered,
    /// Random number generator failure while sealing.
    #[error("random number generator failed")]
    Random,
}

/// What kind of object the attributes belong to (which keys, which prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A regular file: keys from its data key.
    File,
    /// A directory: keys from its directory key.
    Dir,
    /// A symlink or special node: keys from the root directory's key.
    Keyless,
}

/// Checks a plaintext attribute name: a known namespace (`user.`,
/// `trusted.`, `security.`, the two POSIX ACLs), 1–255 bytes.
pub fn check_name(name: &[u8]) -> Result<(), XattrError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(XattrError::BadName);
    }
    let ok = [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
        || name == ACL_ACCESS
        || name == ACL_DEFAULT;
    if ok {
        Ok(())
    } else {
        Err(XattrError::Unsupported)
    }
}

/// The attribute keys of one object.
pub struct XattrCipher {
    names: Zeroizing<[u8; 32]>,
    values: SealingKey,
    object_id: [u8; 16],
    owner: Owner,
}

impl std::fmt::Debug for XattrCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XattrCipher")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl XattrCipher {
    /// The keys of the object `object_id` whose own key is `key` (for
    /// [`Owner::Keyless`]: the root directory's key, and the node's own id,
    /// or the root directory's id on a volume without `keyless-xattr-ids`).
    pub fn new(key: &SecretKey, object_id: [u8; 16], owner: Owner) -> Self {
        let (n, v): (&[u8], &[u8]) = match owner {
            Owner::File | Owner::Dir => (b"sealfs v2 xattr names", b"sealfs v2 xattr values"),
            Owner::Keyless => (
                b"sealfs v2 keyless xattr names",
                b"sealfs v2 keyless xattr values",
            ),
        };
        let names = key.derive(&object_id, n);
        XattrCipher {
            names: Zeroizing::new(*names.expose()),
            values: key.derive(&object_id, v).cipher(),
            object_id,
            owner,
        }
    }

    /// The backing name prefix of this object's attributes.
    pub fn prefix(&self) -> &'static str {
        match self.owner {
            Owner::File | Owner::Dir => USER_PREFIX,
            Owner::Keyless => TRUSTED_PREFIX,
        }
    }

    fn tag(&self, name: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.names[..])
            .expect("HMAC takes any key length");
        mac.update(name);
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; TAG_BYTES];
        t.copy_from_slice(&full[..TAG_BYTES]);
        t
    }

    /// The backing xattr name of the plaintext attribute `name`.
    pub fn backing_name(&self, name: &[u8]) -> String {
        format!(
            "{}{}",
            self.prefix(),
            URL_SAFE_NO_PAD.encode(self.tag(name))
        )
    }

    fn aad(&self, tag: &[u8; TAG_BYTES]) -> Vec<u8> {
        let mut a = Vec::with_capacity(VALUE_AAD.len() + 32);
        a.extend_from_slice(VALUE_AAD);
        a.extend_from_slice(&self.object_id);
        a.extend_from_slice(tag);
        a
    }

    /// Seals `value` of attribute `name`: nonce ‖ AEAD(name length (1) ‖
    /// name ‖ value) ‖ tag.
    pub fn seal(&self, name: &[u8], value: &[u8]) -> Result<Vec<u8>, XattrError> {
        check_name(name)?;
        if value.len() > MAX_VALUE {
            return Err(XattrError::TooBig);
        }
        let mut body = Zeroizing::new(Vec::with_capacity(1 + name.len() + value.len()));
        body.push(name.len() as u8);
        body.extend_from_slice(name);
        body.extend_from_slice(value);
        let nonce = random_nonce().map_err(|_| XattrError::Random)?;
        let tag = self
            .values
            .seal_in_place(&nonce, &self.aad(&self.tag(name)), &mut body[..]);
        let mut out = Vec::with_capacity(OVERHEAD + name.len() + value.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens the sealed value stored under `backing` (a backing name with
    /// this object's prefix): the plaintext name and value. Fails unless
    /// the value was sealed for this object under this very backing name.
    pub fn open(&self, backing: &str, sealed: &[u8]) -> Result<(Vec<u8>, Vec<u8>), XattrError> {
        let suffix = backing
            .strip_prefix(self.prefix())
            .ok_or(XattrError::Tampered)?;
        let tag: [u8; TAG_BYTES] = URL_SAFE_NO_PAD
            .decode(suffix)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or(XattrError::Tampered)?;
        if sealed.len() < OVERHEAD {
            return Err(XattrError::Tampered);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let split = sealed.len() - TAG_LEN;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&sealed[split..]);
        let mut body = Zeroizing::new(sealed[NONCE_LEN..split].to_vec());
        self.values
            .open_in_place(&nonce, &self.aad(&tag), &mut body[..], &t)
            .map_err(|_| XattrError::Tampered)?;
        let n = body[0] as usize;
        if body.len() < 1 + n {
            return Err(XattrError::Tampered);
        }
        let name = body[1..1 + n].to_vec();
        // The tag in the backing name must be this name's: a value sealed
        // for one name cannot be presented under another's tag (the AAD
        // already binds the tag; this binds the name inside to it).
        if self.tag(&name) != tag {
            return Err(XattrError::Tampered);
        }
        Ok((name, body[1 + n..].to_vec()))
    }

    /// Opens the value of attribute `name` read from its backing name.
    pub fn open_named(&self, name: &[u8], sealed: &[u8]) -> Result<Vec<u8>, XattrError> {
        let (n, v) = self.open(&self.backing_name(name), sealed)?;
        if n != name {
            return Err(XattrError::Tampered);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cipher(id: u8) -> XattrCipher {
        XattrCipher::new(&SecretKey::from_bytes([5; 32]), [id; 16], Owner::File)
    }

    #[test]
    fn names() {
        assert!(check_name(b"user.a").is_ok());
        assert!(check_name(b"trusted.x").is_ok());
        assert!(check_name(b"security.capability").is_ok());
        assert!(check_name(ACL_ACCESS).is_ok());
        assert!(check_name(ACL_DEFAULT).is_ok());
        assert_eq!(check_name(b"user."), Err(XattrError::Unsupported));
        assert_eq!(check_name(b"system.other"), Err(XattrError::Unsupported));
        assert_eq!(check_name(b"os2.x"), Err(XattrError::Unsupported));
        assert_eq!(check_name(b""), Err(XattrError::BadName));
        let mut long = b"user.".to_vec();
        long.resize(256, b'a');
        assert_eq!(check_name(&long), Err(XattrError::BadName));
        long.truncate(255);
        assert!(check_name(&long).is_ok());
    }

    #[test]
    fn round_trip_and_bindings() {
        let c = cipher(1);
        let b = c.backing_name(b"user.a");
        assert!(b.starts_with(USER_PREFIX) && b.len() == USER_PREFIX.len() + 22);
        assert_eq!(b, c.backing_name(b"user.a"));
        assert_ne!(b, c.backing_name(b"user.b"));
        // The backing name of the same attribute differs between objects.
        assert_ne!(b, cipher(2).backing_name(b"user.a"));
        let v = c.seal(b"user.a", b"hello").unwrap();
        assert_eq!(v.len(), OVERHEAD + 6 + 5);
        assert_eq!(
            c.open(&b, &v).unwrap(),
            (b"user.a".to_vec(), b"hello".to_vec())
        );
        assert_eq!(c.open_named(b"user.a", &v).unwrap(), b"hello");
        // Two seals of one value differ (random nonce).
        assert_ne!(v, c.seal(b"user.a", b"hello").unwrap());
        // Moved to another attribute name, or another object: fails.
        assert_eq!(
            c.open(&c.backing_name(b"user.b"), &v),
            Err(XattrError::Tampered)
        );
        assert_eq!(c.open_named(b"user.b", &v), Err(XattrError::Tampered));
        let other = cipher(2);
        assert_eq!(
            other.open(&other.backing_name(b"user.a"), &v),
            Err(XattrError::Tampered)
        );
        // Keyless nodes use their own keys and prefix.
        let k = XattrCipher::new(&SecretKey::from_bytes([5; 32]), [1; 16], Owner::Keyless);
        assert!(k.backing_name(b"trusted.a").starts_with(TRUSTED_PREFIX));
        assert_eq!(k.open(&b, &v), Err(XattrError::Tampered));
        // Empty values are values.
        let e = c.seal(b"user.e", b"").unwrap();
        assert_eq!(c.open_named(b"user.e", &e).unwrap(), b"");
        assert_eq!(
            c.seal(b"user.big", &vec![0; MAX_VALUE + 1]),
            Err(XattrError::TooBig)
        );
    }

    proptest! {
        #[test]
        fn tampering_fails(pos in 0usize..40, bit in 0u8..8) {
            let c = cipher(1);
            let mut v = c.seal(b"user.attr", b"0123456789abcdef").unwrap();
            let pos = pos % v.len();
            v[pos] ^= 1 << bit;
            prop_assert!(c.open_named(b"user.attr", &v).is_err());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100), name in "[a-zA-Z0-9_-]{0,30}") {
            let c = cipher(1);
            let _ = c.open(&format!("{USER_PREFIX}{name}"), &bytes);
        }
    }
}
