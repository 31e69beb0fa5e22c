//! Keyring layout 2: a public header with a slot table, then the body
//! sealed under a random KEK with the whole header as AAD. docs/FORMAT.md
//! §2.2.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "sealfs.K"
//!      8     2  layout version = 2
//!     10     2  slot count S (1..=32)
//!     12     4  header length H (52 + the slots, ≤ 65536)
//!     16    16  volume id
//!     32     4  generation (incremented on every store)
//!     36     4  body length n (≤ 16 MiB)
//!     40    12  nonce of the body
//!     52     …  S slot entries, back to back
//!      H     n  sealed body (same length as the plaintext body)
//!    H+n    16  tag; AAD = bytes 0..H
//!
//! slot entry:
//!      0     4  slot id (≥ 1, unique in the table)
//!      4     1  kind (the provider's tag: 1 passphrase, 2 key file,
//!               3 recovery key, 4 PKCS#11, 5 Transit)
//!      5     1  label length L (≤ 64, UTF-8)
//!      6     2  public parameters length P (≤ 4096)
//!      8     2  sealed KEK length B (1..=4096)
//!     10     8  created, seconds since the Unix epoch
//!     18     L  label
//!   18+L     P  the provider's public parameters
//! 18+L+P     B  the provider's sealed copy of the KEK
//! ```
//!
//! Every slot opens to the same 32-byte KEK. Since the header is the body's
//! AAD, any change to the slot table (a slot added, removed or edited) is
//! detected once the keyring is unlocked. The body length makes a cut or
//! extended file a malformed keyring before any secret is tried (not a
//! "wrong passphrase").
//!
//! Owns: the header bytes and the rules of the slot table.
//! Must never: interpret a slot's parameters or sealed bytes (its provider
//! does), or do I/O.

use super::{body, KeyringBody, KeyringFormatError, MAGIC};
use crate::crypto::{random_nonce, SecretKey, NONCE_LEN, TAG_LEN};

/// The layout version field of a v2 keyring.
pub const VERSION: u16 = 2;
/// Fixed part of the header, before the slots.
pub const FIXED_LEN: usize = 52;
/// Largest sealed body accepted.
pub const MAX_BODY: usize = 16 << 20;
/// Most slots in one keyring.
pub const MAX_SLOTS: usize = 32;
/// Longest slot label.
pub const MAX_LABEL: usize = 64;
/// Longest public parameters or sealed KEK of one slot.
pub const MAX_SLOT_FIELD: usize = 4096;
const SLOT_FIXED: usize = 18;
const MAX_HEADER: usize = 65536;

/// One keyslot: a provider's public parameters and its sealed copy of the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Slot id, from 1, unique in the table (never reused by sealfs).
    pub id: u32,
    /// The provider kind's tag.
    pub kind: u8,
    /// A label for people ("laptop", "recovery", …).
    pub label: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Public parameters (the provider's layout).
    pub params: Vec<u8>,
    /// The sealed KEK (the provider's layout).
    pub sealed: Vec<u8>,
}

impl Slot {
    fn encoded_len(&self) -> usize {
        SLOT_FIXED + self.label.len() + self.params.len() + self.sealed.len()
    }

    fn check(&self) -> Result<(), KeyringFormatError> {
        let bad = |m: String| Err(KeyringFormatError::Invalid(m));
        if self.id == 0 {
            return bad("slot id 0".into());
        }
        if self.label.len() > MAX_LABEL || self.label.chars().any(char::is_control) {
            return bad(format!("slot {}: label too long or not printable", self.id));
        }
        if self.params.len() > MAX_SLOT_FIELD
            || self.sealed.is_empty()
            || self.sealed.len() > MAX_SLOT_FIELD
        {
            return bad(format!("slot {}: field length out of range", self.id));
        }
        Ok(())
    }
}

/// The cleartext, authenticated header of a v2 keyring file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Header {
    /// Volume id.
    pub volume_id: [u8; 16],
    /// Incremented on every store.
    pub generation: u32,
    /// The slot table, in stored order.
    pub slots: Vec<Slot>,
}

impl V2Header {
    fn check(&self) -> Result<(), KeyringFormatError> {
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return Err(KeyringFormatError::Invalid(format!(
                "{} slots (1 to {MAX_SLOTS})",
                self.slots.len()
            )));
        }
        let mut ids = std::collections::HashSet::new();
        for s in &self.slots {
            s.check()?;
            if !ids.insert(s.id) {
                return Err(KeyringFormatError::Invalid(format!(
                    "slot id {} repeated",
                    s.id
                )));
            }
        }
        if self.encoded_len() > MAX_HEADER {
            return Err(KeyringFormatError::Invalid("header too long".into()));
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        FIXED_LEN + self.slots.iter().map(Slot::encoded_len).sum::<usize>()
    }

    /// The header bytes with `nonce` and the sealed body's length (the
    /// body's AAD).
    pub fn encode(
        &self,
        nonce: &[u8; NONCE_LEN],
        body_len: usize,
    ) -> Result<Vec<u8>, KeyringFormatError> {
        self.check()?;
        if body_len > MAX_BODY {
            return Err(KeyringFormatError::Invalid("body too long".into()));
        }
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.slots.len() as u16).to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.volume_id);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(nonce);
        for s in &self.slots {
            out.extend_from_slice(&s.id.to_le_bytes());
            out.push(s.kind);
            out.push(s.label.len() as u8);
            out.extend_from_slice(&(s.params.len() as u16).to_le_bytes());
            out.extend_from_slice(&(s.sealed.len() as u16).to_le_bytes());
            out.extend_from_slice(&s.created.to_le_bytes());
            out.extend_from_slice(s.label.as_bytes());
            out.extend_from_slice(&s.params);
            out.extend_from_slice(&s.sealed);
        }
        debug_assert_eq!(out.len(), len);
        Ok(out)
    }

    /// The slot with id `id`.
    pub fn slot(&self, id: u32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id == id)
    }
}

/// Parses the cleartext header: returns it and its length H.
fn parse(bytes: &[u8]) -> Result<(V2Header, usize), KeyringFormatError> {
    if bytes.len() < FIXED_LEN + TAG_LEN {
        return Err(KeyringFormatError::Malformed);
    }
    if &bytes[..8] != MAGIC {
        return Err(KeyringFormatError::BadMagic);
    }
    let v = u16::from_le_bytes([bytes[8], bytes[9]]);
    if v != VERSION {
        return Err(KeyringFormatError::UnsupportedVersion(v));
    }
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let count = u16_at(10) as usize;
    let len = u32_at(12) as usize;
    if !(FIXED_LEN..=MAX_HEADER).contains(&len) || bytes.len() < len + TAG_LEN {
        return Err(KeyringFormatError::Malformed);
    }
    let mut volume_id = [0u8; 16];
    volume_id.copy_from_slice(&bytes[16..32]);
    let generation = u32_at(32);
    let body_len = u32_at(36) as usize;
    if body_len > MAX_BODY || bytes.len() != len + body_len + TAG_LEN {
        return Err(KeyringFormatError::Malformed);
    }
    let mut slots = Vec::with_capacity(count.min(MAX_SLOTS));
    let mut off = FIXED_LEN;
    for _ in 0..count.min(MAX_SLOTS + 1) {
        if off + SLOT_FIXED > len {
            return Err(KeyringFormatError::Malformed);
        }
        let e = &bytes[off..len];
        let id = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes"));
        let kind = e[4];
        let l = e[5] as usize;
        let p = u16::from_le_bytes([e[6], e[7]]) as usize;
        let b = u16::from_le_bytes([e[8], e[9]]) as usize;
        let created = u64::from_le_bytes(e[10..18].try_into().expect("8 bytes"));
        let total = SLOT_FIXED + l + p + b;
        if total > e.len() {
            return Err(KeyringFormatError::Malformed);
        }
        let label = std::str::from_utf8(&e[SLOT_FIXED..SLOT_FIXED + l])
            .map_err(|_| KeyringFormatError::Invalid("slot label is not UTF-8".into()))?
            .to_string();
        slots.push(Slot {
            id,
            kind,
            label,
            created,
            params: e[SLOT_FIXED + l..SLOT_FIXED + l + p].to_vec(),
            sealed: e[SLOT_FIXED + l + p..total].to_vec(),
        });
        off += total;
    }
    if off != len || slots.len() != count {
        return Err(KeyringFormatError::Malformed);
    }
    let header = V2Header {
        volume_id,
        generation,
        slots,
    };
    header.check()?;
    Ok((header, len))
}

/// Parses the cleartext header (to learn the slots).
pub fn parse_header(bytes: &[u8]) -> Result<V2Header, KeyringFormatError> {
    parse(bytes).map(|(h, _)| h)
}

/// Seals a keyring body under `kek`.
pub fn seal(
    body: &KeyringBody,
    header: &V2Header,
    kek: &SecretKey,
) -> Result<Vec<u8>, KeyringFormatError> {
    let nonce = random_nonce()?;
    let mut plain = body::encode(body)?;
    let mut out = header.encode(&nonce, plain.len())?;
    let tag = kek.cipher().seal_in_place(&nonce, &out, &mut plain);
    out.reserve_exact(plain.len() + TAG_LEN);
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a v2 keyring file with `kek`.
pub fn open(bytes: &[u8], kek: &SecretKey) -> Result<KeyringBody, KeyringFormatError> {
    let (_, len) = parse(bytes)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[40..52]);
    let body_end = bytes.len() - TAG_LEN;
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&bytes[body_end..]);
    let mut plain = zeroize::Zeroizing::new(bytes[len..body_end].to_vec());
    kek.cipher()
        .open_in_place(&nonce, &bytes[..len], &mut plain, &tag)
        .map_err(|_| KeyringFormatError::Unlock)?;
    body::decode(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::keyring::{KeyState, MasterKeyVersion};
    use proptest::prelude::*;

    fn sample() -> (KeyringBody, V2Header, SecretKey) {
        let body = KeyringBody::single(
            1,
            0,
            vec![MasterKeyVersion {
                version: 1,
                state: KeyState::Enabled,
                created: 10,
                deletion_due: 0,
                key: SecretKey::generate().unwrap(),
            }],
            10,
        );
        let header = V2Header {
            volume_id: [5; 16],
            generation: 3,
            slots: vec![
                Slot {
                    id: 1,
                    kind: 1,
                    label: "laptop".into(),
                    created: 99,
                    params: vec![1, 2, 3],
                    sealed: vec![9; 60],
                },
                Slot {
                    id: 4,
                    kind: 3,
                    label: String::new(),
                    created: 100,
                    params: vec![],
                    sealed: vec![8; 60],
                },
            ],
        };
        (body, header, SecretKey::generate().unwrap())
    }

    #[test]
    fn round_trip_and_slot_table_is_authenticated() {
        let (body, header, kek) = sample();
        let bytes = seal(&body, &header, &kek).unwrap();
        assert_eq!(parse_header(&bytes).unwrap(), header);
        let back = open(&bytes, &kek).unwrap();
        assert_eq!(back.default().primary, 1);
        // Any edit of the table fails the tag: the label, a sealed byte.
        let at = bytes.windows(6).position(|w| w == b"laptop").unwrap();
        let mut t = bytes.clone();
        t[at] = b'L';
        assert_eq!(open(&t, &kek).unwrap_err(), KeyringFormatError::Unlock);
        let mut t = bytes.clone();
        t[at + 10] ^= 1;
        assert_eq!(open(&t, &kek).unwrap_err(), KeyringFormatError::Unlock);
        assert_eq!(
            open(&bytes, &SecretKey::generate().unwrap()).unwrap_err(),
            KeyringFormatError::Unlock
        );
    }

    #[test]
    fn a_cut_or_extended_file_is_malformed_before_any_secret() {
        let (body, header, kek) = sample();
        let bytes = seal(&body, &header, &kek).unwrap();
        for bad in [
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), b"x"].concat()[..],
        ] {
            assert_eq!(
                parse_header(bad).unwrap_err(),
                KeyringFormatError::Malformed
            );
        }
    }

    #[test]
    fn table_rules() {
        let (body, mut header, kek) = sample();
        header.slots[1].id = 1;
        assert!(seal(&body, &header, &kek).is_err());
        header.slots.clear();
        assert!(seal(&body, &header, &kek).is_err());
        let (_, mut header, _) = sample();
        header.slots[0].label = "x".repeat(65);
        assert!(seal(&body, &header, &kek).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_header(&bytes);
            let _ = open(&bytes, &SecretKey::from_bytes([0; 32]));
            let mut b = b"sealfs.K\x02\x00".to_vec();
            b.extend_from_slice(&bytes);
            let _ = parse_header(&b);
            let _ = open(&b, &SecretKey::from_bytes([0; 32]));
        }
    }
}
