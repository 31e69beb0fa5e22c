//! The sealed state of one chunk group (volumes with the
//! `sealed-group-state` feature): which chunks of the group hold data, and,
//! in the file's last group, the file's plaintext size.
//!
//! Owns: the 96-byte state area of a group's metadata block
//! (docs/FORMAT.md §4.2): its sealing (AES-256-GCM-SIV under a key derived
//! from the file's data key, never the chunk key itself; a random nonce;
//! AAD = domain ‖ file id ‖ group index), its body and what a valid body is.
//! Must never: do I/O, or decide where the area lives in a file (that is
//! [`crate::format::layout`]).
//!
//! A chunk reads as zeros only if its *written* bit is 0: a range the file
//! never held data in (truncate up, a write past the end, fallocate). A
//! chunk whose bit is 1 must authenticate, so a chunk that was never stored,
//! cut or zeroed reads as an integrity failure, never as zeros. The size
//! sealed in the last group is authoritative: ciphertext past it is a stray
//! tail (never read), ciphertext short of it a truncation.

use crate::crypto::{random_nonce, SealingKey, SecretKey, NONCE_LEN, TAG_LEN};
use crate::format::layout::{last_group, tail_fits, CHUNKS_PER_GROUP, CHUNK_SIZE, META_STATE_LEN};

/// Bytes of the sealed state area (nonce, sealed body, tag, zero padding).
pub const STATE_AREA: usize = META_STATE_LEN as usize;
/// Bytes of the plaintext body.
pub const BODY_LEN: usize = 32;
/// Bytes of the area that carry the sealed state; the rest is zero.
pub const SEALED_LEN: usize = NONCE_LEN + BODY_LEN + TAG_LEN;

const AAD_LABEL: &[u8] = b"sealfs:group-state:v1";
/// HKDF label of the state key, derived from the file's data key.
pub const STATE_KEY_LABEL: &[u8] = b"sealfs v2 group state";
const FLAG_LAST: u8 = 1;
/// The file's final chunk is a packed tail: its data lives in block 0
/// (feature `packed-tails`, docs/FORMAT.md §4.7).
const FLAG_PACKED: u8 = 2;

const _: () = assert!(SEALED_LEN <= STATE_AREA);
const _: () = assert!(CHUNKS_PER_GROUP == 128);

/// The state of one group, as sealed in its metadata block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupState {
    /// Bit `i` set: chunk `i` of the group holds data (it must
    /// authenticate); clear: a hole (reads as zeros). Bits of chunks at or
    /// past the file's size mean nothing.
    pub written: u128,
    /// This group carries the file's size.
    pub last: bool,
    /// The file's plaintext size (0 unless `last`). Its last group is this
    /// one, or an earlier one while a truncation is being made (see
    /// docs/FORMAT.md §4.3).
    pub size: u64,
    /// The final chunk's data is stored in block 0 (a packed tail; group
    /// 0's state only, with `last` and a size that ends in group 0 and
    /// fits, docs/FORMAT.md §4.7), not at its place in the group.
    pub packed: bool,
}

impl GroupState {
    /// The state of a group that holds no data yet and is not the last.
    pub const EMPTY: GroupState = GroupState {
        written: 0,
        last: false,
        size: 0,
        packed: false,
    };

    /// Whether this state may say "packed" as group `group`'s state: group
    /// 0, the last group, its final chunk written and short enough to fit
    /// in block 0.
    pub fn may_pack(&self, group: u64) -> bool {
        group == 0
            && self.last
            && tail_fits(self.size)
            && self.is_written((self.size - 1) / CHUNK_SIZE)
    }

    /// Whether chunk `i` (index within the group) holds data.
    pub fn is_written(&self, i: u64) -> bool {
        self.written >> i & 1 == 1
    }

    /// The map with chunks `from..` (indices within the group) cleared.
    pub fn written_below(&self, from: u64) -> u128 {
        if from >= CHUNKS_PER_GROUP {
            self.written
        } else {
            self.written & ((1u128 << from) - 1)
        }
    }

    fn encode(&self) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[..16].copy_from_slice(&self.written.to_le_bytes());
        b[16] = if self.last { FLAG_LAST } else { 0 } | if self.packed { FLAG_PACKED } else { 0 };
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    fn decode(b: &[u8; BODY_LEN], group: u64, packing: bool) -> Result<Self, StateError> {
        let written = u128::from_le_bytes(b[..16].try_into().expect("16 bytes"));
        let flags = b[16];
        let size = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        let known = if packing {
            FLAG_LAST | FLAG_PACKED
        } else {
            FLAG_LAST
        };
        if flags & !known != 0 || b[17..24].iter().any(|&x| x != 0) {
            return Err(StateError::Malformed(group));
        }
        let last = flags & FLAG_LAST != 0;
        if (!last && size != 0) || (last && last_group(size) > group) {
            return Err(StateError::Malformed(group));
        }
        let s = GroupState {
            written,
            last,
            size,
            packed: flags & FLAG_PACKED != 0,
        };
        if s.packed && !s.may_pack(group) {
            return Err(StateError::Malformed(group));
        }
        Ok(s)
    }
}

/// Why a group's state could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The area is all zeros: never written, or zeroed.
    #[error("group {0}: state missing (never written, zeroed or cut)")]
    Missing(u64),
    /// The tag does not verify: tampered, or another group's or file's state.
    #[error("group {0}: state failed authentication (tampered, swapped or from another file)")]
    Tampered(u64),
    /// Authentic, but not a state this format writes.
    #[error("group {0}: state malformed")]
    Malformed(u64),
}

/// Seals and opens the group states of one file.
#[derive(Clone, Debug)]
pub struct StateCipher {
    key: SealingKey,
    file_id: [u8; 16],
    /// The volume has `packed-tails`: the packed flag is accepted (without
    /// it a state carrying the flag is malformed, as for a build that does
    /// not know it).
    packing: bool,
}

impl StateCipher {
    /// The state cipher of the file with `file_id` and data key `data_key`.
    pub fn new(data_key: &SecretKey, file_id: [u8; 16]) -> Self {
        StateCipher {
            key: data_key.derive(&file_id, STATE_KEY_LABEL).cipher(),
            file_id,
            packing: false,
        }
    }

    /// The same cipher, accepting (and allowing the writer to set) the
    /// packed-tail flag: volumes with feature `packed-tails`.
    pub fn with_packed_tails(mut self, on: bool) -> Self {
        self.packing = on;
        self
    }

    /// Whether states of this file may carry the packed-tail flag.
    pub fn packs_tails(&self) -> bool {
        self.packing
    }

    fn aad(&self, group: u64) -> [u8; 45] {
        let mut a = [0u8; 45];
        a[..21].copy_from_slice(AAD_LABEL);
        a[21..37].copy_from_slice(&self.file_id);
        a[37..45].copy_from_slice(&group.to_le_bytes());
        a
    }

    /// The sealed area of `group` holding `state` (fresh random nonce).
    pub fn seal(
        &self,
        group: u64,
        state: &GroupState,
    ) -> Result<[u8; STATE_AREA], crate::crypto::CryptoError> {
        debug_assert!(!state.packed || (self.packing && state.may_pack(group)));
        let nonce = random_nonce()?;
        let mut body = state.encode();
        let tag = self.key.seal_in_place(&nonce, &self.aad(group), &mut body);
        let mut out = [0u8; STATE_AREA];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        out[NONCE_LEN..NONCE_LEN + BODY_LEN].copy_from_slice(&body);
        out[NONCE_LEN + BODY_LEN..SEALED_LEN].copy_from_slice(&tag);
        Ok(out)
    }

    /// Opens the area of `group` (exactly [`STATE_AREA`] bytes; a shorter
    /// slice, from a file cut inside it, is padded with zeros).
    pub fn open(&self, group: u64, area: &[u8]) -> Result<GroupState, StateError> {
        let mut a = [0u8; STATE_AREA];
        let n = area.len().min(STATE_AREA);
        a[..n].copy_from_slice(&area[..n]);
        if a.iter().all(|&b| b == 0) {
            return Err(StateError::Missing(group));
        }
        if a[SEALED_LEN..].iter().any(|&b| b != 0) {
            return Err(StateError::Tampered(group));
        }
        let nonce: [u8; NONCE_LEN] = a[..NONCE_LEN].try_into().expect("nonce");
        let tag: [u8; TAG_LEN] = a[NONCE_LEN + BODY_LEN..SEALED_LEN].try_into().expect("tag");
        let mut body: [u8; BODY_LEN] = a[NONCE_LEN..NONCE_LEN + BODY_LEN].try_into().expect("body");
        self.key
            .open_in_place(&nonce, &self.aad(group), &mut body, &tag)
            .map_err(|_| StateError::Tampered(group))?;
        GroupState::decode(&body, group, self.packing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::GROUP_PLAIN;
    use proptest::prelude::*;

    fn cipher() -> StateCipher {
        StateCipher::new(&SecretKey::generate().unwrap(), [3u8; 16])
    }

    #[test]
    fn round_trip_and_fresh_nonce() {
        let c = cipher();
        let s = GroupState {
            written: 0b1011 | 1 << 127,
            last: true,
            size: GROUP_PLAIN * 2 + 5,
            packed: false,
        };
        let a = c.seal(2, &s).unwrap();
        let b = c.seal(2, &s).unwrap();
        assert_ne!(a, b);
        assert_eq!(c.open(2, &a), Ok(s));
        assert_eq!(c.open(2, &b), Ok(s));
        assert!(a[SEALED_LEN..].iter().all(|&x| x == 0));
    }

    #[test]
    fn bound_to_group_and_file() {
        let c = cipher();
        let a = c.seal(1, &GroupState::EMPTY).unwrap();
        assert_eq!(c.open(2, &a), Err(StateError::Tampered(2)));
        let other = StateCipher {
            key: c.key.clone(),
            file_id: [4u8; 16],
            packing: false,
        };
        assert_eq!(other.open(1, &a), Err(StateError::Tampered(1)));
        let other_key = StateCipher::new(&SecretKey::generate().unwrap(), [3u8; 16]);
        assert_eq!(other_key.open(1, &a), Err(StateError::Tampered(1)));
    }

    #[test]
    fn missing_short_and_padded() {
        let c = cipher();
        assert_eq!(c.open(0, &[0u8; STATE_AREA]), Err(StateError::Missing(0)));
        assert_eq!(c.open(0, &[]), Err(StateError::Missing(0)));
        let a = c.seal(0, &GroupState::EMPTY).unwrap();
        assert_eq!(c.open(0, &a[..40]), Err(StateError::Tampered(0)));
        let mut p = a;
        p[STATE_AREA - 1] = 1;
        assert_eq!(c.open(0, &p), Err(StateError::Tampered(0)));
    }

    #[test]
    fn sizes_must_fit_their_group() {
        let c = cipher();
        // A size whose last group is past the group that carries it is
        // refused; one before it (a truncation in progress) is fine.
        let far = GroupState {
            written: 0,
            last: true,
            size: GROUP_PLAIN + 1,
            packed: false,
        };
        assert_eq!(
            c.open(0, &c.seal(0, &far).unwrap()),
            Err(StateError::Malformed(0))
        );
        assert_eq!(c.open(1, &c.seal(1, &far).unwrap()), Ok(far));
        assert_eq!(c.open(5, &c.seal(5, &far).unwrap()), Ok(far));
        let not_last_with_size = GroupState {
            written: 0,
            last: false,
            size: 1,
            packed: false,
        };
        assert_eq!(
            c.open(0, &c.seal(0, &not_last_with_size).unwrap()),
            Err(StateError::Malformed(0))
        );
    }

    #[test]
    fn the_packed_flag_needs_the_feature_and_a_tail_that_fits() {
        let plain = cipher();
        let packing = cipher().with_packed_tails(true);
        let packing = StateCipher {
            key: plain.key.clone(),
            ..packing
        };
        let s = GroupState {
            written: 0b11,
            last: true,
            size: 4096 + 100,
            packed: true,
        };
        let a = packing.seal(0, &s).unwrap();
        assert_eq!(packing.open(0, &a), Ok(s));
        // A build (or volume) without packed tails refuses the flag.
        assert_eq!(plain.open(0, &a), Err(StateError::Malformed(0)));
        // Flag on a state that cannot pack: sealed by hand (the writer
        // never does), refused as malformed.
        for bad in [
            GroupState {
                size: 4096 + 3529,
                ..s
            }, // does not fit
            GroupState { written: 0b01, ..s }, // tail not written
            GroupState { size: 8192, ..s },    // a whole chunk
        ] {
            let mut body = bad.encode();
            let nonce = [7u8; crate::crypto::NONCE_LEN];
            let tag = packing
                .key
                .seal_in_place(&nonce, &packing.aad(0), &mut body);
            let mut area = [0u8; STATE_AREA];
            area[..12].copy_from_slice(&nonce);
            area[12..44].copy_from_slice(&body);
            area[44..60].copy_from_slice(&tag);
            assert_eq!(
                packing.open(0, &area),
                Err(StateError::Malformed(0)),
                "{bad:?}"
            );
        }
        // Not in group 1.
        assert!(!GroupState {
            size: GROUP_PLAIN + 5,
            ..s
        }
        .may_pack(1));
    }

    #[test]
    fn map_helpers() {
        let s = GroupState {
            written: u128::MAX,
            ..GroupState::EMPTY
        };
        assert_eq!(s.written_below(0), 0);
        assert_eq!(s.written_below(3), 0b111);
        assert_eq!(s.written_below(128), u128::MAX);
        assert!(s.is_written(127));
        assert!(!GroupState::EMPTY.is_written(0));
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_detected(written in any::<u128>(), size in 0u64..(1 << 40), flip in 0usize..(SEALED_LEN * 8)) {
            let c = cipher();
            let g = last_group(size);
            let s = GroupState { written, last: true, size, packed: false };
            let mut a = c.seal(g, &s).unwrap();
            prop_assert_eq!(c.open(g, &a), Ok(s));
            a[flip / 8] ^= 1 << (flip % 8);
            prop_assert!(c.open(g, &a).is_err());
        }

        #[test]
        fn open_never_panics(area in proptest::collection::vec(any::<u8>(), 0..120), g in any::<u64>()) {
            let _ = cipher().open(g, &area);
        }
    }
}
