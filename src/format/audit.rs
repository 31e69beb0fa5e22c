//! The audit log format: segment headers, HMAC-chained sealed records, and
//! the verification of a whole chain. docs/FORMAT.md §9 describes every byte.
//!
//! Owns: encoding and decoding segments and records, the chain MAC
//! (HMAC-SHA256 under a key derived from a master key version), sealing
//! record bodies (AES-256-GCM-SIV, so paths in the log are as secret as
//! names in the cipher dir), and [`verify_chain`].
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
    /// `keyring_stored` record that follows the store). The rollback anchor
    /// reads them (docs/CONTROL.md §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring_generation: Option<u32>,
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

/// The first problem [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// Segment number (from its file name) where the chain breaks.
    pub segment: u64,
    /// Byte offset in that segment.
    pub offset: u64,
    /// Sequence number expected at that point.
    pub expected_seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Result of verifying a whole log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Segments read.
    pub segments: u64,
    /// Records that verified.
    pub records: u64,
    /// Sequence number of the last good record (0 if none).
    pub last_seq: u64,
    /// Bytes of an incomplete last record (a crash while appending; not an error).
    pub torn_tail_bytes: u64,
    /// The first break, if any.
    pub first_break: Option<ChainBreak>,
}

/// Verifies segments given in file order as `(segment number from the file
/// name, bytes)`. `keys_for` yields the audit keys of a master key version
/// (None if destroyed or unknown). Each verified record goes to `on_record`.
/// Stops at the first break.
pub fn verify_chain<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    volume_id: &[u8; 16],
    keys_for: &mut dyn FnMut(u32) -> Option<std::sync::Arc<AuditKeys>>,
    on_record: &mut dyn FnMut(&AuditRecord),
) -> ChainReport {
    let mut report = ChainReport::default();
    let mut prev_end: Option<[u8; MAC_LEN]> = None;
    let mut expected_seq = 1u64;
    let segments: Vec<(u64, &[u8])> = segments.into_iter().collect();
    let n = segments.len();
    for (expected_seg, (i, (number, bytes))) in (1u64..).zip(segments.into_iter().enumerate()) {
        let brk = |offset: u64, expected_seq: u64, reason: String| ChainBreak {
            segment: number,
            offset,
            expected_seq,
            reason,
        };
        report.segments += 1;
        if number != expected_seg {
            report.first_break = Some(brk(
                0,
                expected_seq,
                if number > expected_seg {
                    format!("segment {expected_seg} is missing (found {number} next)")
                } else {
                    format!("segment {number} out of order (expected {expected_seg})")
                },
            ));
            return report;
        }
        let header = match parse_header(bytes) {
            Ok(h) => h,
            Err(e) => {
                report.first_break = Some(brk(0, expected_seq, e.to_string()));
                return report;
            }
        };
        if &header.volume_id != volume_id {
            report.first_break = Some(brk(0, expected_seq, "segment of another volume".into()));
            return report;
        }
        let Some(keys) = keys_for(header.key_version) else {
            report.first_break = Some(brk(
                0,
                expected_seq,
                format!(
                    "cannot verify: master key version {} is destroyed or unknown",
                    header.key_version
                ),
            ));
            return report;
        };
        let mut chain = match check_header(bytes, &keys) {
            Ok(c) => c,
            Err(e) => {
                report.first_break = Some(brk(0, expected_seq, e.to_string()));
                return report;
            }
        };
        if header.segment != number || header.first_seq != expected_seq {
            report.first_break = Some(brk(
                0,
                expected_seq,
                format!(
                    "segment header says segment {} starting at record {}; records before it were removed or segments swapped",
                    header.segment, header.first_seq
                ),
            ));
            return report;
        }
        let linked = match prev_end {
            Some(p) => p == header.prev_mac,
            None => header.prev_mac == [0u8; MAC_LEN],
        };
        if !linked {
            report.first_break = Some(brk(
                0,
                expected_seq,
                "segment does not chain from the end of the previous one (records removed at a segment end)".into(),
            ));
            return report;
        }
        let mut off = SEGMENT_HEADER_LEN;
        loop {
            match decode_record(&bytes[off..], &chain, &keys) {
                Ok(RecordStep::End) => break,
                Ok(RecordStep::Torn(left)) => {
                    if i + 1 == n {
                        report.torn_tail_bytes = left as u64;
                        break;
                    }
                    report.first_break = Some(brk(
                        off as u64,
                        expected_seq,
                        "segment ends inside a record (truncated)".into(),
                    ));
                    return report;
                }
                Ok(RecordStep::Record(rec, len, mac)) => {
                    if rec.seq != expected_seq {
                        report.first_break = Some(brk(
                            off as u64,
                            expected_seq,
                            format!("found record {} (removed or reordered)", rec.seq),
                        ));
                        return report;
                    }
                    on_record(&rec);
                    report.records += 1;
                    report.last_seq = rec.seq;
                    expected_seq += 1;
                    chain = mac;
                    off += len;
                }
                Err(e) => {
                    let seq_here = bytes
                        .get(off + 4..off + 12)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                    let reason = match (e, seq_here) {
                        (AuditFormatError::RecordMac, Some(s)) if s != expected_seq => {
                            format!("found record {s} (removed or reordered)")
                        }
                        (e, _) => e.to_string(),
                    };
                    report.first_break = Some(brk(off as u64, expected_seq, reason));
                    return report;
                }
            }
        }
        prev_end = Some(chain);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn keys() -> Arc<AuditKeys> {
        Arc::new(AuditKeys::derive(&SecretKey::from_bytes([7; 32]), &[1; 16]))
    }

    fn rec(seq: u64) -> AuditRecord {
        AuditRecord {
            seq,
            time_ms: 1000 + seq,
            principal: Principal {
                uid: 1001,
                gid: 100,
                pid: 42,
                comm: Some("cat".into()),
            },
            op: "decrypt".into(),
            key_version: Some(1),
            path: Some(format!("/f{seq}")),
            grant: None,
            outcome: "ok".into(),
            error: None,
            detail: None,
            keyring_generation: None,
        }
    }

    /// Builds a log of `segs` segments with `per` records each; returns
    /// (segment bytes, record offsets per segment).
    fn build(segs: u64, per: u64) -> Vec<(u64, Vec<u8>, Vec<usize>)> {
        let k = keys();
        let mut out = Vec::new();
        let mut prev = [0u8; MAC_LEN];
        let mut seq = 1;
        for s in 1..=segs {
            let h = SegmentHeader {
                key_version: 1,
                volume_id: [1; 16],
                segment: s,
                first_seq: seq,
                created_ms: 5,
                prev_mac: prev,
            };
            let (mut bytes, mut chain) = encode_header(&h, &k);
            let mut offs = Vec::new();
            for _ in 0..per {
                offs.push(bytes.len());
                let (r, m) = encode_record(&rec(seq), &chain, &k).unwrap();
                bytes.extend_from_slice(&r);
                chain = m;
                seq += 1;
            }
            prev = chain;
            out.push((s, bytes, offs));
        }
        out
    }

    fn verify(log: &[(u64, Vec<u8>, Vec<usize>)]) -> ChainReport {
        let k = keys();
        verify_chain(
            log.iter().map(|(n, b, _)| (*n, b.as_slice())),
            &[1; 16],
            &mut |v| (v == 1).then(|| k.clone()),
            &mut |_| {},
        )
    }

    #[test]
    fn clean_log_verifies() {
        let log = build(3, 4);
        let r = verify(&log);
        assert_eq!(r.first_break, None);
        assert_eq!((r.segments, r.records, r.last_seq), (3, 12, 12));
    }

    #[test]
    fn edited_byte_is_found() {
        let mut log = build(2, 3);
        let off = log[1].2[1];
        log[1].1[off + 20] ^= 1;
        let b = verify(&log).first_break.unwrap();
        assert_eq!((b.segment, b.expected_seq), (2, 5));
        assert!(b.reason.contains("MAC"), "{}", b.reason);
    }

    #[test]
    fn removed_record_is_found() {
        let mut log = build(1, 4);
        let (a, b) = (log[0].2[1], log[0].2[2]);
        log[0].1.drain(a..b);
        let brk = verify(&log).first_break.unwrap();
        assert_eq!(brk.expected_seq, 2);
        assert!(brk.reason.contains("found record 3"), "{}", brk.reason);
    }

    #[test]
    fn reordered_records_are_found() {
        let mut log = build(1, 4);
        let (a, b, c) = (log[0].2[1], log[0].2[2], log[0].2[3]);
        let bytes = &mut log[0].1;
        let r2 = bytes[a..b].to_vec();
        let r3 = bytes[b..c].to_vec();
        let mut swapped = r3;
        swapped.extend_from_slice(&r2);
        bytes.splice(a..c, swapped);
        let brk = verify(&log).first_break.unwrap();
        assert_eq!(brk.expected_seq, 2);
        assert!(brk.reason.contains("reordered"), "{}", brk.reason);
    }

    #[test]
    fn removed_segment_and_tail_of_segment_are_found() {
        let log = build(3, 2);
        let r = verify(&[log[0].clone(), log[2].clone()]);
        assert!(r
            .first_break
            .unwrap()
            .reason
            .contains("segment 2 is missing"));
        let mut log = build(2, 3);
        let cut = log[0].2[2];
        log[0].1.truncate(cut);
        let r = verify(&log);
        assert!(r.first_break.is_some());
    }

    #[test]
    fn torn_tail_of_last_segment_is_not_a_break() {
        let mut log = build(1, 3);
        let len = log[0].1.len();
        log[0].1.truncate(len - 10);
        let r = verify(&log);
        assert_eq!(r.first_break, None);
        assert_eq!(r.records, 2);
        assert!(r.torn_tail_bytes > 0);
    }

    #[test]
    fn wrong_key_fails_at_the_header() {
        let log = build(1, 1);
        let other = Arc::new(AuditKeys::derive(&SecretKey::from_bytes([8; 32]), &[1; 16]));
        let r = verify_chain(
            log.iter().map(|(n, b, _)| (*n, b.as_slice())),
            &[1; 16],
            &mut |_| Some(other.clone()),
            &mut |_| {},
        );
        assert!(r.first_break.unwrap().reason.contains("header MAC"));
    }

    #[test]
    fn garbage_never_panics() {
        let k = keys();
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode_record(&junk, &[0; 32], &k);
            let _ = parse_header(&junk);
        }
    }
}
