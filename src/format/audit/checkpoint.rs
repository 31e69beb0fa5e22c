//! The prune checkpoint (`sealfs.audit/pruned`): what a prune removed from
//! the front of the audit log, MACed like a segment header, so that what is
//! left still verifies as one chain (docs/FORMAT.md §12.3).
//!
//! Owns: encoding, decoding and checking the 152-byte checkpoint.
//! Must never: perform I/O, or accept a checkpoint whose MAC does not
//! verify under the key version it names.

use hmac::Mac;

use super::{AuditFormatError, AuditKeys, MAC_LEN};

/// First bytes of the checkpoint file.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"SEALPRN1";
/// Format version of the checkpoint.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Bytes covered by the MAC.
const FIELDS: usize = 120;
/// Length of the checkpoint file.
pub const CHECKPOINT_LEN: usize = FIELDS + MAC_LEN;

/// What a prune removed: every segment up to `segment` (every record up to
/// `last_seq`), and what the next segment must chain from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCheckpoint {
    /// The master key version whose audit keys MAC the checkpoint.
    pub key_version: u32,
    /// Volume id.
    pub volume_id: [u8; 16],
    /// The last segment pruned: the log now starts at `segment + 1`.
    pub segment: u64,
    /// Sequence number of the last record pruned (0 if none).
    pub last_seq: u64,
    /// The chain value at the end of segment `segment`, which the header of
    /// segment `segment + 1` names as its `prev_mac`.
    pub chain_mac: [u8; MAC_LEN],
    /// The last keyring generation a pruned record named (0: none).
    pub last_keyring_generation: u64,
    /// The highest keyring generation a pruned record proves was stored
    /// (0: none); see [`super::AuditRecord::proven_keyring_generation`].
    pub proven_keyring_generation: u64,
    /// Time of the last pruned record, ms since the epoch (0 if none).
    pub last_record_ms: u64,
    /// When the prune ran, ms since the epoch.
    pub pruned_ms: u64,
    /// Records pruned since the log began (this prune and every earlier one).
    pub records_pruned: u64,
}

fn fields(c: &PruneCheckpoint) -> [u8; FIELDS] {
    let mut b = [0u8; FIELDS];
    b[0..8].copy_from_slice(CHECKPOINT_MAGIC);
    b[8..12].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&c.key_version.to_le_bytes());
    b[16..32].copy_from_slice(&c.volume_id);
    b[32..40].copy_from_slice(&c.segment.to_le_bytes());
    b[40..48].copy_from_slice(&c.last_seq.to_le_bytes());
    b[48..80].copy_from_slice(&c.chain_mac);
    b[80..88].copy_from_slice(&c.last_keyring_generation.to_le_bytes());
    b[88..96].copy_from_slice(&c.proven_keyring_generation.to_le_bytes());
    b[96..104].copy_from_slice(&c.last_record_ms.to_le_bytes());
    b[104..112].copy_from_slice(&c.pruned_ms.to_le_bytes());
    b[112..120].copy_from_slice(&c.records_pruned.to_le_bytes());
    b
}

fn mac(keys: &AuditKeys, fields: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut m = keys.hmac();
    m.update(b"checkpoint");
    m.update(fields);
    m
}

/// The checkpoint's bytes, MACed with `keys` (those of `c.key_version`).
pub fn encode_checkpoint(c: &PruneCheckpoint, keys: &AuditKeys) -> Vec<u8> {
    let f = fields(c);
    let tag: [u8; MAC_LEN] = mac(keys, &f).finalize().into_bytes().into();
    let mut out = f.to_vec();
    out.extend_from_slice(&tag);
    out
}

/// The key version a checkpoint names (to find its keys), without checking
/// anything else.
pub fn checkpoint_key_version(bytes: &[u8]) -> Result<u32, AuditFormatError> {
    if bytes.len() < 16 || &bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(AuditFormatError::BadCheckpoint);
    }
    Ok(u32::from_le_bytes(
        bytes[12..16].try_into().expect("4 bytes"),
    ))
}

/// Parses and checks a checkpoint: its length, magic, version, MAC (under
/// `keys`, those of the version it names) and volume id.
pub fn decode_checkpoint(
    bytes: &[u8],
    keys: &AuditKeys,
    volume_id: &[u8; 16],
) -> Result<PruneCheckpoint, AuditFormatError> {
    if bytes.len() != CHECKPOINT_LEN || &bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(AuditFormatError::BadCheckpoint);
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    if u32_at(8) != CHECKPOINT_VERSION {
        return Err(AuditFormatError::BadCheckpoint);
    }
    mac(keys, &bytes[..FIELDS])
        .verify_slice(&bytes[FIELDS..])
        .map_err(|_| AuditFormatError::CheckpointMac)?;
    let c = PruneCheckpoint {
        key_version: u32_at(12),
        volume_id: bytes[16..32].try_into().expect("16 bytes"),
        segment: u64_at(32),
        last_seq: u64_at(40),
        chain_mac: bytes[48..80].try_into().expect("32 bytes"),
        last_keyring_generation: u64_at(80),
        proven_keyring_generation: u64_at(88),
        last_record_ms: u64_at(96),
        pruned_ms: u64_at(104),
        records_pruned: u64_at(112),
    };
    if &c.volume_id != volume_id {
        return Err(AuditFormatError::CheckpointMac);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn keys(b: u8) -> AuditKeys {
        AuditKeys::derive(&SecretKey::from_bytes([b; 32]), &[7; 16])
    }

    fn sample() -> PruneCheckpoint {
        PruneCheckpoint {
            key_version: 3,
            volume_id: [7; 16],
            segment: 4,
            last_seq: 900,
            chain_mac: [9; MAC_LEN],
            last_keyring_generation: 12,
            proven_keyring_generation: 12,
            last_record_ms: 1_796_000_000_000,
            pruned_ms: 1_796_000_100_000,
            records_pruned: 900,
        }
    }

    #[test]
    fn round_trips_and_every_byte_counts() {
        let k = keys(1);
        let bytes = encode_checkpoint(&sample(), &k);
        assert_eq!(bytes.len(), CHECKPOINT_LEN);
        assert_eq!(checkpoint_key_version(&bytes).unwrap(), 3);
        assert_eq!(decode_checkpoint(&bytes, &k, &[7; 16]).unwrap(), sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode_checkpoint(&b, &k, &[7; 16]).is_err(), "byte {i}");
        }
        assert!(decode_checkpoint(&bytes[..CHECKPOINT_LEN - 1], &k, &[7; 16]).is_err());
    }

    #[test]
    fn another_key_or_volume_is_refused() {
        let bytes = encode_checkpoint(&sample(), &keys(1));
        assert_eq!(
            decode_checkpoint(&bytes, &keys(2), &[7; 16]),
            Err(AuditFormatError::CheckpointMac)
        );
        assert_eq!(
            decode_checkpoint(&bytes, &keys(1), &[8; 16]),
            Err(AuditFormatError::CheckpointMac)
        );
    }
}
