//! Sealing and opening of content chunks.
//!
//! Owns: the chunk AAD (file id, chunk index, and on volumes without sealed
//! group states the last-chunk flag) and the (nonce, tag) metadata entry of
//! each chunk.
//! Must never: read or write files, or decide where bytes live (see
//! [`crate::format::layout`]).

use crate::crypto::{random_nonce, CryptoError, SealingKey, SecretKey, NONCE_LEN, TAG_LEN};
use crate::format::layout::{ChunkIndex, META_ENTRY_LEN};

/// The 28-byte on-disk metadata entry of one chunk: nonce then tag.
pub type MetaEntry = [u8; META_ENTRY_LEN as usize];

const CHUNK_AAD_LABEL: &[u8; 8] = b"sealfsC1";
const CHUNK_AAD_LABEL_V2: &[u8; 8] = b"sealfsC2";

/// How a volume's file content is laid out and authenticated (its config's
/// feature flags, docs/FORMAT.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// The first format: the final chunk carries a last-chunk flag in its
    /// AAD, an all-zero chunk (entry and data) is a hole, and the size is
    /// the ciphertext's.
    LastChunkFlag,
    /// Feature `sealed-group-state`: each group's sealed state says which
    /// chunks hold data (a chunk is a hole only if its bit is clear) and the
    /// last group's state holds the size; the chunk AAD has no last flag.
    SealedGroupState,
    /// Sealed group states plus feature `packed-tails` (docs/FORMAT.md
    /// §4.7): chunks are sealed as with [`ContentFormat::SealedGroupState`];
    /// a file that ends in group 0 may keep its final chunk's data in
    /// block 0, which group 0's state says.
    PackedTails,
}

impl ContentFormat {
    /// Whether files have sealed group states (every format but the first).
    pub fn has_group_states(self) -> bool {
        self != ContentFormat::LastChunkFlag
    }
}

/// Why a chunk failed to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Tag mismatch: tampered, swapped, moved, or a truncated file's new last chunk.
    #[error("chunk {0} failed authentication (tampered, swapped or truncated)")]
    Tampered(ChunkIndex),
}

/// What a chunk's stored bytes turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkContent {
    /// Authentic content, now decrypted in the buffer.
    Data,
    /// A never-written chunk of a sparse file (all-zero entry and data): reads as zeros.
    Hole,
}

/// Seals and opens the chunks of one file with its data key.
#[derive(Clone, Debug)]
pub struct ChunkCipher {
    key: SealingKey,
    file_id: [u8; 16],
    format: ContentFormat,
}

/// A chunk AAD: 33 bytes with the last flag, the first 32 without.
struct Aad([u8; 33], usize);

impl std::ops::Deref for Aad {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

impl ChunkCipher {
    /// A cipher for the file with `file_id` whose data key is `data_key`.
    pub fn new(data_key: &SecretKey, file_id: [u8; 16], format: ContentFormat) -> Self {
        ChunkCipher {
            key: data_key.cipher(),
            file_id,
            format,
        }
    }

    /// The content format this cipher seals for.
    pub fn format(&self) -> ContentFormat {
        self.format
    }

    fn aad(&self, k: ChunkIndex, last: bool) -> Aad {
        let mut a = [0u8; 33];
        a[8..24].copy_from_slice(&self.file_id);
        a[24..32].copy_from_slice(&k.to_le_bytes());
        match self.format {
            ContentFormat::LastChunkFlag => {
                a[..8].copy_from_slice(CHUNK_AAD_LABEL);
                a[32] = last as u8;
                Aad(a, 33)
            }
            ContentFormat::SealedGroupState | ContentFormat::PackedTails => {
                a[..8].copy_from_slice(CHUNK_AAD_LABEL_V2);
                Aad(a, 32)
            }
        }
    }

    /// Encrypts chunk `k` in place (`buf` is its plaintext, at most one chunk)
    /// with a fresh random nonce; returns its metadata entry. `last` marks the
    /// file's final chunk, so a truncation at a chunk boundary is detected
    /// (ignored with sealed group states, where the size is sealed instead).
    pub fn seal(
        &self,
        k: ChunkIndex,
        last: bool,
        buf: &mut [u8],
    ) -> Result<MetaEntry, CryptoError> {
        let nonce = random_nonce()?;
        let tag = self.key.seal_in_place(&nonce, &self.aad(k, last), buf);
        let mut e = [0u8; META_ENTRY_LEN as usize];
        e[..NONCE_LEN].copy_from_slice(&nonce);
        e[NONCE_LEN..].copy_from_slice(&tag);
        Ok(e)
    }

    /// Decrypts chunk `k` in place. A chunk that is not the file's last may
    /// also carry the last flag (left by a crash between extending a file and
    /// re-sealing its old final chunk); the final chunk must carry it.
    ///
    /// With sealed group states, `is_last` is ignored and there is no hole
    /// here: the group state says which chunks hold data, and a chunk that
    /// should must authenticate (an all-zero one fails).
    pub fn open(
        &self,
        k: ChunkIndex,
        is_last: bool,
        buf: &mut [u8],
        entry: &MetaEntry,
    ) -> Result<ChunkContent, ChunkError> {
        if self.format == ContentFormat::LastChunkFlag
            && entry.iter().all(|&b| b == 0)
            && buf.iter().all(|&b| b == 0)
        {
            return Ok(ChunkContent::Hole);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&entry[..NONCE_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&entry[NONCE_LEN..]);
        if self
            .key
            .open_in_place(&nonce, &self.aad(k, is_last), buf, &tag)
            .is_ok()
        {
            return Ok(ChunkContent::Data);
        }
        // The AEAD restores the ciphertext on failure, so a second try is sound.
        if !is_last
            && self.format == ContentFormat::LastChunkFlag
            && self
                .key
                .open_in_place(&nonce, &self.aad(k, true), buf, &tag)
                .is_ok()
        {
            return Ok(ChunkContent::Data);
        }
        Err(ChunkError::Tampered(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cipher() -> ChunkCipher {
        ChunkCipher::new(
            &SecretKey::generate().unwrap(),
            [7u8; 16],
            ContentFormat::LastChunkFlag,
        )
    }

    fn cipher_v2() -> ChunkCipher {
        ChunkCipher::new(
            &SecretKey::generate().unwrap(),
            [7u8; 16],
            ContentFormat::SealedGroupState,
        )
    }

    #[test]
    fn v2_has_no_hole_and_no_last_flag() {
        let c = cipher_v2();
        let mut z = vec![0u8; 4096];
        assert_eq!(
            c.open(2, false, &mut z, &[0u8; 28]),
            Err(ChunkError::Tampered(2))
        );
        let mut a = vec![4u8; 100];
        let e = c.seal(5, true, &mut a).unwrap();
        let mut b = a.clone();
        assert_eq!(c.open(5, false, &mut a, &e), Ok(ChunkContent::Data));
        assert_eq!(c.open(5, true, &mut b, &e), Ok(ChunkContent::Data));
        assert_eq!(a, vec![4u8; 100]);
        // Another index, and the same key under the v1 AAD, fail.
        let mut a = vec![4u8; 100];
        let e = c.seal(5, false, &mut a).unwrap();
        assert!(c.open(6, false, &mut a.clone(), &e).is_err());
        let v1 = ChunkCipher {
            format: ContentFormat::LastChunkFlag,
            ..c.clone()
        };
        assert!(v1.open(5, false, &mut a.clone(), &e).is_err());
        assert!(v1.open(5, true, &mut a, &e).is_err());
    }

    #[test]
    fn round_trip_and_nonce_fresh() {
        let c = cipher();
        let mut a = vec![5u8; 4096];
        let mut b = vec![5u8; 4096];
        let ea = c.seal(3, false, &mut a).unwrap();
        let eb = c.seal(3, false, &mut b).unwrap();
        assert_ne!(ea, eb);
        assert_ne!(a, b);
        assert_eq!(c.open(3, false, &mut a, &ea), Ok(ChunkContent::Data));
        assert_eq!(a, vec![5u8; 4096]);
    }

    #[test]
    fn swap_index_file_and_truncation_detected() {
        let c = cipher();
        let mut a = vec![1u8; 4096];
        let e = c.seal(0, false, &mut a).unwrap();
        // wrong index
        assert_eq!(
            c.open(1, false, &mut a.clone(), &e),
            Err(ChunkError::Tampered(1))
        );
        // other file
        let other = ChunkCipher::new(
            &SecretKey::generate().unwrap(),
            [7u8; 16],
            ContentFormat::LastChunkFlag,
        );
        assert!(other.open(0, false, &mut a.clone(), &e).is_err());
        let same_key_other_id = ChunkCipher {
            key: c.key.clone(),
            file_id: [8u8; 16],
            format: c.format,
        };
        assert!(same_key_other_id
            .open(0, false, &mut a.clone(), &e)
            .is_err());
        // a middle chunk presented as the last one (file truncated after it)
        assert_eq!(
            c.open(0, true, &mut a.clone(), &e),
            Err(ChunkError::Tampered(0))
        );
    }

    #[test]
    fn crash_left_last_flag_on_middle_chunk_still_reads() {
        let c = cipher();
        let mut a = vec![9u8; 4096];
        let e = c.seal(4, true, &mut a).unwrap();
        assert_eq!(c.open(4, false, &mut a, &e), Ok(ChunkContent::Data));
        assert_eq!(a, vec![9u8; 4096]);
    }

    #[test]
    fn hole_reads_as_hole_but_zero_entry_with_data_fails() {
        let c = cipher();
        let mut z = vec![0u8; 4096];
        assert_eq!(c.open(2, false, &mut z, &[0u8; 28]), Ok(ChunkContent::Hole));
        let mut d = vec![0u8; 4096];
        d[100] = 1;
        assert!(c.open(2, false, &mut d, &[0u8; 28]).is_err());
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_detected(len in 1usize..4097, flip in 0usize..(4096 * 8 + 28 * 8), k in 0u64..1000) {
            let c = cipher();
            let mut buf: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let orig = buf.clone();
            let mut e = c.seal(k, true, &mut buf).unwrap();
            let bit = flip % ((len + 28) * 8);
            if bit < len * 8 { buf[bit / 8] ^= 1 << (bit % 8); } else { let b = bit - len * 8; e[b / 8] ^= 1 << (b % 8); }
            prop_assert!(c.open(k, true, &mut buf, &e).is_err());
            // and the untouched copy still opens
            let mut again = orig.clone();
            let e2 = c.seal(k, true, &mut again).unwrap();
            prop_assert_eq!(c.open(k, true, &mut again, &e2), Ok(ChunkContent::Data));
            prop_assert_eq!(again, orig);
        }
    }
}
