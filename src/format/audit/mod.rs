//! The audit log format: segment headers, HMAC-chained sealed records, and
//! the verification of a whole chain ([`verify`](verify_chain)). docs/FORMAT.md §12
//! describes every byte.
//!
//! Owns: encoding and decoding segments and records, the chain MAC
//! (HMAC-SHA256 under a key derived from a master key version), sealing
//! record bodies (AES-256-GCM-SIV, so paths in the log are as secret as
//! names in the cipher dir), and, in `verify`, walking a whole chain past
//! its breaks ([`verify_chain`]) and finding a keyring's anchor in it
//! ([`check_anchor`]).
//! Must never: perform I/O, or accept a record whose MAC does not verify.
//! MAC comparison is the `hmac` crate's constant-time `verify_slice`.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::crypto::{random_nonce, SealingKey, SecretKey, NONCE_LEN, TAG_LEN};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SEALAUD1";
/// Format version in the segment header.
pub const SEGMENT_VERSION: u32 = 1;
/// Length of the fixed header fields covered by the header MAC.
const HEADER_FIELDS: usize = 96;
/// Segment header length: fields plus their MAC.
pub const SEGMENT_HEADER_LEN: usize = HEADER_FIELDS + MAC_LEN;
/// Chain MAC length.
pub const MAC_LEN: usize = 32;
/// Length prefix + sequence number before a record's sealed body.
const RECORD_PREFIX: usize = 4 + 8;
/// Largest sealed body accepted (a record is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

const MAC_LABEL: &[u8] = b"sealfs audit chain mac v1";
const SEAL_LABEL: &[u8] = b"sealfs audit record seal v1";
const BODY_AAD: &[u8] = b"sealfs:audit:v1";
/// Between a label and the host id in a host stream's key labels.
const STREAM_LABEL: &[u8] = b" host ";

type HmacSha256 = Hmac<Sha256>;

/// Errors decoding audit bytes. Never contains record plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditFormatError {
    /// Not a segment, or a version this build does not read.
    #[error("not an audit segment (bad magic or version)")]
    BadMagic,
    /// Shorter than a header.
    #[error("truncated segment header")]
    TruncatedHeader,
    /// The header MAC does not verify.
    #[error("segment header MAC does not verify (edited, or another volume's)")]
    HeaderMac,
    /// A record's MAC does not verify against the chain.
    #[error("record MAC does not verify (edited, removed or reordered)")]
    RecordMac,
    /// A record's length field is impossible.
    #[error("record length {0} out of range")]
    BadLength(u32),
    /// The record body does not decrypt or parse (only with a valid MAC: a bug or key mix-up).
    #[error("record body does not open")]
    Body,
    /// Not a prune checkpoint, or a version this build does not read.
    #[error("not a prune checkpoint (bad length, magic or version)")]
    BadCheckpoint,
    /// The prune checkpoint's MAC does not verify.
    #[error("prune checkpoint MAC does not verify (edited, or another volume's)")]
    CheckpointMac,
}

/// Keys of one master key version for the audit log.
pub struct AuditKeys {
    mac: SecretKey,
    seal: SealingKey,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKeys(<redacted>)")
    }
}

impl AuditKeys {
    /// Derives the audit keys from a master key version of the volume.
    pub fn derive(master: &SecretKey, volume_id: &[u8; 16]) -> Self {
        AuditKeys {
            mac: master.derive(volume_id, MAC_LABEL),
            seal: master.derive(volume_id, SEAL_LABEL).cipher(),
        }
    }

    /// The keys of one audit stream (docs/FORMAT.md §12.4): `None` is the
    /// volume's local stream (the keys above); a host's stream derives
    /// both keys with the host id appended to the labels, so a segment or
    /// checkpoint moved from one stream to another fails its MAC.
    pub fn derive_for_stream(master: &SecretKey, volume_id: &[u8; 16], host: Option<&str>) -> Self {
        let Some(host) = host else {
            return Self::derive(master, volume_id);
        };
        let label = |base: &[u8]| {
            let mut l = base.to_vec();
            l.extend_from_slice(STREAM_LABEL);
            l.extend_from_slice(host.as_bytes());
            l
        };
        AuditKeys {
            mac: master.derive(volume_id, &label(MAC_LABEL)),
            seal: master.derive(volume_id, &label(SEAL_LABEL)).cipher(),
        }
    }

    fn hmac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        <HmacSha256 as KeyInit>::new_from_slice(self.mac.expose())
            .expect("HMAC takes any key length")
    }
}

/// Who caused a key use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// User id (from the FUSE request or the socket peer).
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id (0 for the daemon itself).
    pub pid: u32,
    /// Command name of the process (`/proc/PID/comm`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

/// One audit record (the sealed body, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps across segments.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who.
    pub principal: Principal,
    /// What (see docs/CONTROL.md §14 for the list).
    pub op: String,
    /// Master key version involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    /// Encryption context: the plaintext path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Grant through which access was given (or checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// "ok", "denied" or "error".
    pub outcome: String,
    /// What went wrong, or extra detail (e.g. a rename's old path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Extra detail that is not an error (e.g. the old path of a rename).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The keyring generation a keyring change makes (on the change's own
    /// record, written before the keyring is stored) or made (on the
    /// `keyring_stored` record that follows the store). The rollback
    /// anchor reads them (docs/CONTROL.md §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring_generation: Option<u64>,
    /// For an aggregated record (denials): how many events it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For an aggregated record: when the first of its events happened (ms
    /// since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<u64>,
    /// For an aggregated record: when the last of its events happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<u64>,
}

impl AuditRecord {
    /// A record of `op` with `outcome` by `principal`, every optional
    /// field empty (`seq` and `time_ms` are filled in by the log).
    pub fn new(principal: Principal, op: &str, outcome: &str) -> Self {
        AuditRecord {
            seq: 0,
            time_ms: 0,
            principal,
            op: op.to_string(),
            key_version: None,
            path: None,
            grant: None,
            outcome: outcome.to_string(),
            error: None,
            detail: None,
            keyring_generation: None,
            count: None,
            first_ms: None,
            last_ms: None,
        }
    }

    /// The keyring generation this record proves was stored: a
    /// `keyring_stored` record proves its own generation, a change's record
    /// (written before the store) only the one before it.
    pub fn proven_keyring_generation(&self) -> Option<u64> {
        let g = self.keyring_generation?;
        Some(if self.op == "keyring_stored" {
            g
        } else {
            g.saturating_sub(1)
        })
    }
}

/// The cleartext header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Master key version the segment's keys derive from.
    pub key_version: u32,
    /// Volume id.
    pub volume_id: [u8; 16],
    /// Segment number, from 1.
    pub segment: u64,
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Chain value at the end of the previous segment (zero for segment 1).
    pub prev_mac: [u8; MAC_LEN],
}

fn header_fields(h: &SegmentHeader) -> [u8; HEADER_FIELDS] {
    let mut b = [0u8; HEADER_FIELDS];
    b[0..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.key_version.to_le_bytes());
    b[16..32].copy_from_slice(&h.volume_id);
    b[32..40].copy_from_slice(&h.segment.to_le_bytes());
    b[40..48].copy_from_slice(&h.first_seq.to_le_bytes());
    b[48..56].copy_from_slice(&h.created_ms.to_le_bytes());
    b[56..88].copy_from_slice(&h.prev_mac);
    b
}

/// Encodes a header with its MAC; returns the bytes and the chain value
/// that the segment's first record chains from (the header MAC).
pub fn encode_header(h: &SegmentHeader, keys: &AuditKeys) -> (Vec<u8>, [u8; MAC_LEN]) {
    let fields = header_fields(h);
    let mut m = keys.hmac();
    m.update(b"header");
    m.update(&fields);
    let mac: [u8; MAC_LEN] = m.finalize().into_bytes().into();
    let mut out = fields.to_vec();
    out.extend_from_slice(&mac);
    (out, mac)
}

/// Parses the header fields without checking the MAC (the key version is
/// needed to find the key first).
pub fn parse_header(bytes: &[u8]) -> Result<SegmentHeader, AuditFormatError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        if bytes.len() >= 8 && &bytes[0..8] != SEGMENT_MAGIC {
            return Err(AuditFormatError::BadMagic);
        }
        return Err(AuditFormatError::TruncatedHeader);
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    if &bytes[0..8] != SEGMENT_MAGIC || u32_at(8) != SEGMENT_VERSION {
        return Err(AuditFormatError::BadMagic);
    }
    Ok(SegmentHeader {
        key_version: u32_at(12),
        volume_id: bytes[16..32].try_into().expect("16 bytes"),
        segment: u64_at(32),
        first_seq: u64_at(40),
        created_ms: u64_at(48),
        prev_mac: bytes[56..88].try_into().expect("32 bytes"),
    })
}

/// Checks the header MAC; returns the chain value after the header.
pub fn check_header(bytes: &[u8], keys: &AuditKeys) -> Result<[u8; MAC_LEN], AuditFormatError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(AuditFormatError::TruncatedHeader);
    }
    let mut m = keys.hmac();
    m.update(b"header");
    m.update(&bytes[..HEADER_FIELDS]);
    m.verify_slice(&bytes[HEADER_FIELDS..SEGMENT_HEADER_LEN])
        .map_err(|_| AuditFormatError::HeaderMac)?;
    Ok(bytes[HEADER_FIELDS..SEGMENT_HEADER_LEN]
        .try_into()
        .expect("32 bytes"))
}

fn record_mac(keys: &AuditKeys, prev: &[u8; MAC_LEN], framed: &[u8]) -> HmacSha256 {
    let mut m = keys.hmac();
    m.update(b"record");
    m.update(prev);
    m.update(framed);
    m
}

fn body_aad(seq: u64) -> Vec<u8> {
    let mut aad = BODY_AAD.to_vec();
    aad.extend_from_slice(&seq.to_le_bytes());
    aad
}

/// Seals `rec` as the record after chain value `prev`: returns the bytes to
/// append and the new chain value.
pub fn encode_record(
    rec: &AuditRecord,
    prev: &[u8; MAC_LEN],
    keys: &AuditKeys,
) -> Result<(Vec<u8>, [u8; MAC_LEN]), crate::crypto::CryptoError> {
    let mut body = serde_json::to_vec(rec).expect("an audit record always serializes");
    let nonce = random_nonce()?;
    let tag = keys
        .seal
        .seal_in_place(&nonce, &body_aad(rec.seq), &mut body);
    let sealed_len = NONCE_LEN + body.len() + TAG_LEN;
    let mut out = Vec::with_capacity(RECORD_PREFIX + sealed_len + MAC_LEN);
    out.extend_from_slice(&(sealed_len as u32).to_le_bytes());
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    let mac: [u8; MAC_LEN] = record_mac(keys, prev, &out).finalize().into_bytes().into();
    out.extend_from_slice(&mac);
    Ok((out, mac))
}

/// One step of reading records from a segment body.
#[derive(Debug)]
pub enum RecordStep {
    /// A complete, verified record: (record, its encoded length, new chain value).
    Record(Box<AuditRecord>, usize, [u8; MAC_LEN]),
    /// The bytes end inside a record (a crash while appending): how many bytes are left.
    Torn(usize),
    /// No bytes left.
    End,
}

/// Reads the record at the start of `bytes`, chained after `prev`.
pub fn decode_record(
    bytes: &[u8],
    prev: &[u8; MAC_LEN],
    keys: &AuditKeys,
) -> Result<RecordStep, AuditFormatError> {
    if bytes.is_empty() {
        return Ok(RecordStep::End);
    }
    if bytes.len() < RECORD_PREFIX {
        return Ok(RecordStep::Torn(bytes.len()));
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if (len as usize) < NONCE_LEN + TAG_LEN || len as usize > MAX_BODY {
        return Err(AuditFormatError::BadLength(len));
    }
    let total = RECORD_PREFIX + len as usize + MAC_LEN;
    if bytes.len() < total {
        return Ok(RecordStep::Torn(bytes.len()));
    }
    let framed = &bytes[..total - MAC_LEN];
    record_mac(keys, prev, framed)
        .verify_slice(&bytes[total - MAC_LEN..total])
        .map_err(|_| AuditFormatError::RecordMac)?;
    let seq = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let nonce: [u8; NONCE_LEN] = bytes[12..12 + NONCE_LEN].try_into().expect("nonce");
    let ct_end = RECORD_PREFIX + len as usize - TAG_LEN;
    let tag: [u8; TAG_LEN] = bytes[ct_end..ct_end + TAG_LEN].try_into().expect("tag");
    let mut body = bytes[12 + NONCE_LEN..ct_end].to_vec();
    keys.seal
        .open_in_place(&nonce, &body_aad(seq), &mut body, &tag)
        .map_err(|_| AuditFormatError::Body)?;
    let rec: AuditRecord = serde_json::from_slice(&body).map_err(|_| AuditFormatError::Body)?;
    if rec.seq != seq {
        return Err(AuditFormatError::Body);
    }
    let mac: [u8; MAC_LEN] = bytes[total - MAC_LEN..total].try_into().expect("mac");
    Ok(RecordStep::Record(Box::new(rec), total, mac))
}

mod checkpoint;
mod prune;
mod verify;
pub use checkpoint::{
    checkpoint_key_version, decode_checkpoint, encode_checkpoint, PruneCheckpoint, CHECKPOINT_LEN,
};
pub use prune::{plan_prune, PrunePlan, PruneRefusal, PruneRule, PrunedInfo};
pub use verify::{
    check_anchor, open_checkpoint, verify_chain, verify_chain_anchored, verify_log_view,
    AnchorCheck, AuditHead, ChainBreak, ChainEvent, ChainReport, KeyringAnchor,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_with_every_field() {
        let k = AuditKeys::derive(&SecretKey::from_bytes([7; 32]), &[1; 16]);
        let mut r = AuditRecord::new(Principal::default(), "denied_summary", "denied");
        r.seq = 9;
        r.keyring_generation = Some(12);
        r.count = Some(100_000);
        r.first_ms = Some(5);
        r.last_ms = Some(6);
        let (bytes, mac) = encode_record(&r, &[3; MAC_LEN], &k).unwrap();
        match decode_record(&bytes, &[3; MAC_LEN], &k).unwrap() {
            RecordStep::Record(back, len, m) => {
                assert_eq!(*back, r);
                assert_eq!((len, m), (bytes.len(), mac));
            }
            other => panic!("{other:?}"),
        }
        // A record written before these fields existed still reads.
        let old: AuditRecord = serde_json::from_str(
            r#"{"seq":1,"time_ms":2,"principal":{"uid":0,"gid":0,"pid":1},"op":"list","outcome":"ok"}"#,
        )
        .unwrap();
        assert_eq!(old.keyring_generation, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("count"));
    }

    #[test]
    fn a_stream_s_records_do_not_verify_in_another_stream() {
        let master = SecretKey::from_bytes([7; 32]);
        let local = AuditKeys::derive_for_stream(&master, &[1; 16], None);
        let a = AuditKeys::derive_for_stream(&master, &[1; 16], Some("a"));
        let b = AuditKeys::derive_for_stream(&master, &[1; 16], Some("b"));
        let h = SegmentHeader {
            key_version: 1,
            volume_id: [1; 16],
            segment: 1,
            first_seq: 1,
            created_ms: 5,
            prev_mac: [0; MAC_LEN],
        };
        let (bytes, chain) = encode_header(&h, &a);
        assert_eq!(check_header(&bytes, &a), Ok(chain));
        assert_eq!(check_header(&bytes, &b), Err(AuditFormatError::HeaderMac));
        assert_eq!(
            check_header(&bytes, &local),
            Err(AuditFormatError::HeaderMac)
        );
        let mut r = AuditRecord::new(Principal::default(), "open", "ok");
        r.seq = 1;
        let (rec, _) = encode_record(&r, &chain, &a).unwrap();
        assert_eq!(
            decode_record(&rec, &chain, &b).unwrap_err(),
            AuditFormatError::RecordMac
        );
        // The local stream's keys are the ones volumes always had.
        let old = AuditKeys::derive(&master, &[1; 16]);
        let (lb, _) = encode_header(&h, &old);
        assert!(check_header(&lb, &local).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let k = AuditKeys::derive(&SecretKey::from_bytes([7; 32]), &[1; 16]);
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode_record(&junk, &[0; 32], &k);
            let _ = parse_header(&junk);
        }
    }
}
