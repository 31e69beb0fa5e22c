//! File headers and directory metadata records: a random id plus two slots,
//! each holding the object's own key wrapped by one master key version, with
//! the encryption context (parent directory id + name) bound as AAD.
//!
//! Owns: the byte layout of both records (docs/FORMAT.md §4, §5) and the AAD
//! of key wrapping. Two slots let a rename or rewrap add the new wrapping
//! before the old one is removed, so a crash leaves one that opens. A file
//! with more than one name is *linked* ([`FLAG_LINKED`]): a slot may then be
//! bound to a context that names no path ([`Binding::Linked`]), and the
//! file's link table ([`crate::format::links`]) says which names reach it;
//! [`SealedRecord::open`] never opens such a slot, only
//! [`SealedRecord::open_linked`] does, so code that does not check the
//! table cannot be fooled by a linked file.
//! Must never: do I/O, or hold the master keys themselves (it is handed
//! ready wrapping ciphers).

use crate::crypto::{CryptoError, SealingKey, SecretKey, KEY_LEN, NONCE_LEN, TAG_LEN};

/// Bytes of an encoded record (the rest of its 256-byte area is zero).
pub const RECORD_LEN: usize = 160;
const SLOT_LEN: usize = 64;
const SLOTS_OFFSET: usize = 32;
/// On-disk format version of records written by this code.
pub const RECORD_VERSION: u16 = 1;
/// Header flag (bytes 10..12): the file is linked, its link table is in
/// use (files of volumes with the `hard-links` feature only).
pub const FLAG_LINKED: u16 = 1;
const LINKED_AAD_LABEL: &[u8] = b"sealfs:file-key:linked:v1";

/// Which kind of object a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A regular file's header: the slot wraps its data key.
    File,
    /// A directory's metadata: the slot wraps its directory key.
    Dir,
}

impl RecordKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            RecordKind::File => b"sealfs.F",
            RecordKind::Dir => b"sealfs.D",
        }
    }
    fn aad_label(self) -> &'static [u8] {
        match self {
            RecordKind::File => b"sealfs:file-key:v1",
            RecordKind::Dir => b"sealfs:dir-key:v1",
        }
    }
    /// HKDF label of the wrapping key derived from a master key version.
    pub fn wrap_label(self) -> &'static [u8] {
        match self {
            RecordKind::File => b"sealfs v1 wrap file data keys",
            RecordKind::Dir => b"sealfs v1 wrap directory keys",
        }
    }
}

/// Errors decoding or opening a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a record.
    #[error("header truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a sealfs record of the expected kind.
    #[error("bad magic: not a sealfs {0:?} record")]
    BadMagic(RecordKind),
    /// Written by a newer format.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u16),
    /// Flags this build does not know (or a flag on a directory record).
    #[error("unsupported record flags {0:#x}")]
    UnsupportedFlags(u16),
    /// No slot is filled.
    #[error("no key slot is filled")]
    NoSlot,
    /// Every slot is under a master key version this keyring lacks or has destroyed.
    #[error("key version {0} is not available")]
    KeyVersionUnavailable(u32),
    /// Slots exist but none opens for this context: moved/copied ciphertext or tampering.
    #[error("encryption context mismatch: moved, copied or tampered")]
    ContextMismatch,
    /// Random number generator failure while wrapping.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The encryption context an object is bound to: where it sits in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptionContext<'a> {
    /// Random id of the directory holding the object (all zero for the root).
    pub parent_dir_id: [u8; 16],
    /// The object's plaintext name in that directory (empty for the root).
    pub name: &'a [u8],
}

impl EncryptionContext<'_> {
    /// The context of the volume's root directory.
    pub const ROOT: EncryptionContext<'static> = EncryptionContext {
        parent_dir_id: [0u8; 16],
        name: b"",
    };
}

/// What a slot's wrapping is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// One place in the tree: the only name of the object.
    Path(&'a EncryptionContext<'a>),
    /// No place: the file is linked, its link table lists its names.
    Linked,
}

/// One wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySlot {
    /// Master key version that wrapped it (never 0).
    pub key_version: u32,
    nonce: [u8; NONCE_LEN],
    wrapped: [u8; KEY_LEN],
    tag: [u8; TAG_LEN],
}

/// A decoded file header or directory record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    /// File or directory.
    pub kind: RecordKind,
    /// The object's random id (file id bound in chunk AAD; directory id that children bind to).
    pub id: [u8; 16],
    /// Header flags ([`FLAG_LINKED`]); 0 for directories.
    pub flags: u16,
    /// Up to two wrappings of the same key.
    pub slots: [Option<KeySlot>; 2],
}

fn slot_aad(
    kind: RecordKind,
    volume_id: &[u8; 16],
    id: &[u8; 16],
    version: u32,
    binding: Binding<'_>,
) -> Vec<u8> {
    let ctx = match binding {
        Binding::Path(ctx) => ctx,
        Binding::Linked => {
            let mut a = Vec::with_capacity(64);
            a.extend_from_slice(LINKED_AAD_LABEL);
            a.extend_from_slice(volume_id);
            a.extend_from_slice(id);
            a.extend_from_slice(&version.to_le_bytes());
            return a;
        }
    };
    let mut a = Vec::with_capacity(64 + ctx.name.len());
    a.extend_from_slice(kind.aad_label());
    a.extend_from_slice(volume_id);
    a.extend_from_slice(id);
    a.extend_from_slice(&version.to_le_bytes());
    a.extend_from_slice(&ctx.parent_dir_id);
    a.extend_from_slice(&(ctx.name.len() as u32).to_le_bytes());
    a.extend_from_slice(ctx.name);
    a
}

impl SealedRecord {
    /// A record with a single slot wrapping `key` for `ctx` under `version`.
    pub fn create(
        kind: RecordKind,
        volume_id: &[u8; 16],
        id: [u8; 16],
        key: &SecretKey,
        version: u32,
        wrapper: &SealingKey,
        ctx: &EncryptionContext<'_>,
    ) -> Result<Self, HeaderError> {
        let mut r = SealedRecord {
            kind,
            id,
            flags: 0,
            slots: [None, None],
        };
        r.slots[0] = Some(r.make_slot(volume_id, key, version, wrapper, Binding::Path(ctx))?);
        Ok(r)
    }

    /// Wraps `key` into a new slot bound to `binding` (not stored in the
    /// record). A [`Binding::Linked`] slot is for files only.
    pub fn make_slot(
        &self,
        volume_id: &[u8; 16],
        key: &SecretKey,
        version: u32,
        wrapper: &SealingKey,
        binding: Binding<'_>,
    ) -> Result<KeySlot, HeaderError> {
        let aad = slot_aad(self.kind, volume_id, &self.id, version, binding);
        let (nonce, wrapped, tag) = wrapper.wrap_key(key, &aad)?;
        Ok(KeySlot {
            key_version: version,
            nonce,
            wrapped,
            tag,
        })
    }

    /// Whether the file is linked ([`FLAG_LINKED`]).
    pub fn is_linked(&self) -> bool {
        self.flags & FLAG_LINKED != 0
    }

    /// Unwraps the key for `ctx`, trying each slot's path binding;
    /// `wrapper_for` gives the wrapping cipher of a master key version, or
    /// `None` if unavailable. Returns the key and the index of the slot that
    /// opened. A slot bound to [`Binding::Linked`] never opens here (see
    /// [`SealedRecord::open_linked`]).
    pub fn open(
        &self,
        volume_id: &[u8; 16],
        ctx: &EncryptionContext<'_>,
        wrapper_for: &dyn Fn(u32) -> Option<SealingKey>,
    ) -> Result<(SecretKey, usize), HeaderError> {
        self.open_bound(volume_id, Binding::Path(ctx), wrapper_for)
    }

    /// Unwraps the key of a linked file from its [`Binding::Linked`] slot.
    /// The caller must then check the name it came through against the
    /// file's link table: the slot alone says nothing about the path.
    pub fn open_linked(
        &self,
        volume_id: &[u8; 16],
        wrapper_for: &dyn Fn(u32) -> Option<SealingKey>,
    ) -> Result<(SecretKey, usize), HeaderError> {
        if self.kind != RecordKind::File || !self.is_linked() {
            return Err(HeaderError::ContextMismatch);
        }
        self.open_bound(volume_id, Binding::Linked, wrapper_for)
    }

    fn open_bound(
        &self,
        volume_id: &[u8; 16],
        binding: Binding<'_>,
        wrapper_for: &dyn Fn(u32) -> Option<SealingKey>,
    ) -> Result<(SecretKey, usize), HeaderError> {
        let mut missing = None;
        let mut any = false;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(s) = slot else { continue };
            any = true;
            let Some(w) = wrapper_for(s.key_version) else {
                missing = Some(s.key_version);
                continue;
            };
            let aad = slot_aad(self.kind, volume_id, &self.id, s.key_version, binding);
            if let Ok(k) = w.unwrap_key(&s.nonce, &s.wrapped, &s.tag, &aad) {
                return Ok((k, i));
            }
        }
        if !any {
            return Err(HeaderError::NoSlot);
        }
        match missing {
            Some(v) => Err(HeaderError::KeyVersionUnavailable(v)),
            None => Err(HeaderError::ContextMismatch),
        }
    }

    /// Encodes to [`RECORD_LEN`] bytes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[..8].copy_from_slice(self.kind.magic());
        b[8..10].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&self.flags.to_le_bytes());
        // 12..16 reserved: zero
        b[16..32].copy_from_slice(&self.id);
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot {
                let o = SLOTS_OFFSET + i * SLOT_LEN;
                b[o..o + 4].copy_from_slice(&s.key_version.to_le_bytes());
                b[o + 4..o + 16].copy_from_slice(&s.nonce);
                b[o + 16..o + 48].copy_from_slice(&s.wrapped);
                b[o + 48..o + 64].copy_from_slice(&s.tag);
            }
        }
        b
    }

    /// Decodes a record of `kind` from the start of `bytes`.
    pub fn decode(kind: RecordKind, bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < RECORD_LEN {
            return Err(HeaderError::Truncated(bytes.len()));
        }
        if &bytes[..8] != kind.magic() {
            return Err(HeaderError::BadMagic(kind));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != RECORD_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        let known = match kind {
            RecordKind::File => FLAG_LINKED,
            RecordKind::Dir => 0,
        };
        if flags & !known != 0 {
            return Err(HeaderError::UnsupportedFlags(flags));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[16..32]);
        let mut slots = [None, None];
        for (i, slot) in slots.iter_mut().enumerate() {
            let o = SLOTS_OFFSET + i * SLOT_LEN;
            let v = u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
            if v == 0 {
                continue;
            }
            let mut s = KeySlot {
                key_version: v,
                nonce: [0; NONCE_LEN],
                wrapped: [0; KEY_LEN],
                tag: [0; TAG_LEN],
            };
            s.nonce.copy_from_slice(&bytes[o + 4..o + 16]);
            s.wrapped.copy_from_slice(&bytes[o + 16..o + 48]);
            s.tag.copy_from_slice(&bytes[o + 48..o + 64]);
            *slot = Some(s);
        }
        Ok(SealedRecord {
            kind,
            id,
            flags,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VOL: [u8; 16] = [1; 16];

    fn setup() -> (SecretKey, SealingKey, SealedRecord) {
        let master = SecretKey::generate().unwrap();
        let w = master.derive(&VOL, RecordKind::File.wrap_label()).cipher();
        let dk = SecretKey::generate().unwrap();
        let ctx = EncryptionContext {
            parent_dir_id: [2; 16],
            name: b"a.txt",
        };
        let r = SealedRecord::create(RecordKind::File, &VOL, [3; 16], &dk, 1, &w, &ctx).unwrap();
        (dk, w, r)
    }

    #[test]
    fn round_trip_and_context_binding() {
        let (dk, w, r) = setup();
        let enc = r.encode();
        let d = SealedRecord::decode(RecordKind::File, &enc).unwrap();
        assert_eq!(d, r);
        let get = |v: u32| if v == 1 { Some(w.clone()) } else { None };
        let ctx = EncryptionContext {
            parent_dir_id: [2; 16],
            name: b"a.txt",
        };
        let (k, i) = d.open(&VOL, &ctx, &get).unwrap();
        assert_eq!(k.expose(), dk.expose());
        assert_eq!(i, 0);
        let moved = EncryptionContext {
            parent_dir_id: [2; 16],
            name: b"b.txt",
        };
        assert_eq!(
            d.open(&VOL, &moved, &get).unwrap_err(),
            HeaderError::ContextMismatch
        );
        let other_dir = EncryptionContext {
            parent_dir_id: [9; 16],
            name: b"a.txt",
        };
        assert_eq!(
            d.open(&VOL, &other_dir, &get).unwrap_err(),
            HeaderError::ContextMismatch
        );
        assert_eq!(
            d.open(&[7; 16], &ctx, &get).unwrap_err(),
            HeaderError::ContextMismatch
        );
        assert_eq!(
            d.open(&VOL, &ctx, &|_| None).unwrap_err(),
            HeaderError::KeyVersionUnavailable(1)
        );
        assert!(SealedRecord::decode(RecordKind::Dir, &enc).is_err());
    }

    #[test]
    fn second_slot_for_rename() {
        let (dk, w, mut r) = setup();
        let new_ctx = EncryptionContext {
            parent_dir_id: [5; 16],
            name: b"new",
        };
        r.slots[1] = Some(
            r.make_slot(&VOL, &dk, 1, &w, Binding::Path(&new_ctx))
                .unwrap(),
        );
        let get = |_v: u32| Some(w.clone());
        let old_ctx = EncryptionContext {
            parent_dir_id: [2; 16],
            name: b"a.txt",
        };
        assert_eq!(r.open(&VOL, &old_ctx, &get).unwrap().1, 0);
        assert_eq!(r.open(&VOL, &new_ctx, &get).unwrap().1, 1);
    }

    #[test]
    fn linked_slot_opens_only_through_open_linked() {
        let (dk, w, mut r) = setup();
        let get = |_v: u32| Some(w.clone());
        let ctx = EncryptionContext {
            parent_dir_id: [2; 16],
            name: b"a.txt",
        };
        let linked = r.make_slot(&VOL, &dk, 1, &w, Binding::Linked).unwrap();
        r.slots = [Some(linked), None];
        // Not flagged: open_linked refuses, and open never uses the slot.
        assert_eq!(
            r.open_linked(&VOL, &get).unwrap_err(),
            HeaderError::ContextMismatch
        );
        r.flags = FLAG_LINKED;
        assert_eq!(
            r.open(&VOL, &ctx, &get).unwrap_err(),
            HeaderError::ContextMismatch
        );
        let d = SealedRecord::decode(RecordKind::File, &r.encode()).unwrap();
        assert!(d.is_linked());
        let (k, i) = d.open_linked(&VOL, &get).unwrap();
        assert_eq!((k.expose(), i), (dk.expose(), 0));
        // Another file id or volume does not open it.
        let mut moved = d.clone();
        moved.id = [4; 16];
        assert!(moved.open_linked(&VOL, &get).is_err());
        assert!(d.open_linked(&[9; 16], &get).is_err());
        // A path-bound slot is not a linked one.
        let mut path_only = d.clone();
        path_only.slots = [
            Some(d.make_slot(&VOL, &dk, 1, &w, Binding::Path(&ctx)).unwrap()),
            None,
        ];
        assert!(path_only.open_linked(&VOL, &get).is_err());
        assert!(path_only.open(&VOL, &ctx, &get).is_ok());
        // Unknown flags, and the linked flag on a directory record, are refused.
        let mut enc = d.encode();
        enc[10] = 2;
        assert_eq!(
            SealedRecord::decode(RecordKind::File, &enc),
            Err(HeaderError::UnsupportedFlags(2))
        );
        let mut dir = d.encode();
        dir[..8].copy_from_slice(b"sealfs.D");
        assert_eq!(
            SealedRecord::decode(RecordKind::Dir, &dir),
            Err(HeaderError::UnsupportedFlags(1))
        );
    }

    #[test]
    fn truncated_and_bad_magic() {
        let (_, _, r) = setup();
        let enc = r.encode();
        assert_eq!(
            SealedRecord::decode(RecordKind::File, &enc[..100]),
            Err(HeaderError::Truncated(100))
        );
        let mut bad = enc;
        bad[0] ^= 1;
        assert!(matches!(
            SealedRecord::decode(RecordKind::File, &bad),
            Err(HeaderError::BadMagic(_))
        ));
        let mut v2 = enc;
        v2[8] = 2;
        assert_eq!(
            SealedRecord::decode(RecordKind::File, &v2),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SealedRecord::decode(RecordKind::File, &bytes);
            let _ = SealedRecord::decode(RecordKind::Dir, &bytes);
        }

        #[test]
        fn tampered_slot_fails(pos in 16usize..96) {
            let (_, w, r) = setup();
            let mut enc = r.encode();
            enc[pos] ^= 0x40;
            let get = |_v: u32| Some(w.clone());
            let ctx = EncryptionContext { parent_dir_id: [2; 16], name: b"a.txt" };
            if let Ok(d) = SealedRecord::decode(RecordKind::File, &enc) {
                prop_assert!(d.open(&VOL, &ctx, &get).is_err());
            }
        }
    }
}
