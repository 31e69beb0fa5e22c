//! Walking a whole audit chain: every break is reported and the walk goes
//! on at the next record or segment that verifies, so one flipped bit does
//! not hide the rest of the trail; and finding a position of the log (an
//! [`AuditHead`], the rollback anchor the keyring keeps) in it.
//!
//! Owns: [`verify_chain`], [`verify_chain_anchored`], [`check_anchor`], the
//! resynchronisation after a break (docs/FORMAT.md §12.1), and the report
//! types.
//! Must never: hand a record to its caller that did not verify (its MAC
//! against the chain value before it, its body under the segment's key),
//! or call a log intact that has a break.

use std::sync::Arc;

use hmac::Mac;
use serde::{Deserialize, Serialize};

use super::checkpoint::{checkpoint_key_version, decode_checkpoint, PruneCheckpoint};
use super::prune::PrunedInfo;
use super::{
    check_header, decode_record, parse_header, record_mac, AuditFormatError, AuditKeys,
    AuditRecord, RecordStep, MAC_LEN, MAX_BODY, RECORD_PREFIX, SEGMENT_HEADER_LEN,
};
use crate::crypto::{NONCE_LEN, TAG_LEN};

/// The smallest record on disk: prefix, nonce, tag, MAC (an empty body).
const MIN_RECORD: usize = RECORD_PREFIX + NONCE_LEN + TAG_LEN + MAC_LEN;

/// A position in the log: just after record `seq` (0: none yet) of
/// segment `segment`, where the chain value is `chain_mac` (the last
/// record's MAC, or the segment header's MAC when the segment holds no
/// record yet). The keyring stores the head as of its last store (the
/// rollback anchor); [`check_anchor`] finds it again.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Segment number.
    pub segment: u64,
    /// Sequence number of the last record before the position (0 if none).
    pub seq: u64,
    /// The chain value at the position.
    pub chain_mac: [u8; MAC_LEN],
}

impl std::fmt::Debug for AuditHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A MAC is no secret, but a short form is easier to read in logs.
        write!(
            f,
            "AuditHead(segment {}, record {}, mac {:02x}{:02x}{:02x}{:02x}…)",
            self.segment,
            self.seq,
            self.chain_mac[0],
            self.chain_mac[1],
            self.chain_mac[2],
            self.chain_mac[3]
        )
    }
}

/// What a keyring says about the log: the head when it was last stored,
/// and its own generation (which the log's keyring-changing records name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyringAnchor {
    /// The audit head the keyring sealed at its last store.
    pub head: AuditHead,
    /// The keyring's generation.
    pub keyring_generation: u64,
}

/// One place where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// Segment number (from its file name) where the chain breaks.
    pub segment: u64,
    /// Byte offset in that segment.
    pub offset: u64,
    /// Sequence number expected at that point (0 when unknown: after a
    /// segment whose key version is destroyed).
    pub expected_seq: u64,
    /// What is wrong.
    pub reason: String,
    /// The first record that verified again after the break, if any:
    /// records `expected_seq .. resumed_seq` are missing or unverifiable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_seq: Option<u64>,
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
    /// Every break, in log order (empty: the chain is whole).
    pub breaks: Vec<ChainBreak>,
    /// The end of the chain as verified (the head a writer would continue
    /// from), if the last segment verified to its end.
    #[serde(skip)]
    pub end: Option<AuditHead>,
    /// What earlier prunes removed, from a prune checkpoint that verified
    /// (the walk started after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<PrunedInfo>,
}

impl ChainReport {
    /// The first break, if any.
    pub fn first_break(&self) -> Option<&ChainBreak> {
        self.breaks.first()
    }

    /// Whether the chain verified without a break.
    pub fn is_intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// What a walk over the log meets, in log order.
#[derive(Debug)]
pub enum ChainEvent<'a> {
    /// A record that verified.
    Record(&'a AuditRecord),
    /// A break, given once the walk has resumed after it (so
    /// `resumed_seq` is known) or at the end of the log.
    Break(&'a ChainBreak),
}

/// What the walk saw, for callers that look for a position.
pub(super) enum Seen<'a> {
    /// A segment header that verified; its MAC is the chain value after it.
    Header {
        segment: u64,
        first_seq: u64,
        mac: &'a [u8; MAC_LEN],
    },
    /// A record that verified.
    Record {
        segment: u64,
        rec: &'a AuditRecord,
        mac: &'a [u8; MAC_LEN],
    },
    /// A segment that cannot be verified (its key version is gone).
    NoKey { segment: u64 },
    /// A break (see [`ChainEvent::Break`]).
    Break(&'a ChainBreak),
}

/// Where a walk starts: the whole log, or at a segment in the middle
/// (whose first sequence number and link to the previous segment are then
/// taken from its verified header).
pub(super) struct Start {
    pub(super) segment: u64,
    seq: Option<u64>,
    prev: Option<[u8; MAC_LEN]>,
}

impl Start {
    pub(super) const BEGINNING: Start = Start {
        segment: 1,
        seq: Some(1),
        prev: Some([0; MAC_LEN]),
    };

    /// Right after what a prune removed.
    pub(super) fn after(c: &PruneCheckpoint) -> Start {
        Start {
            segment: c.segment + 1,
            seq: Some(c.last_seq + 1),
            prev: Some(c.chain_mac),
        }
    }
}

/// The prune checkpoint's bytes checked under the keys of the version it
/// names (`keys_for`), or why they cannot be trusted.
pub fn open_checkpoint(
    bytes: &[u8],
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
) -> Result<PruneCheckpoint, String> {
    let v = checkpoint_key_version(bytes).map_err(|e| e.to_string())?;
    let keys = keys_for(v).ok_or_else(|| {
        format!("the prune checkpoint cannot be verified: master key version {v} is destroyed or unknown")
    })?;
    decode_checkpoint(bytes, &keys, volume_id).map_err(|e| e.to_string())
}

/// Where a walk over the log given with an optional prune checkpoint
/// starts: after a checkpoint that verifies, else at the beginning with a
/// break that says why the checkpoint was not used.
fn start_of(
    segments: &[(u64, &[u8])],
    checkpoint: Option<&[u8]>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
) -> (Start, Option<PruneCheckpoint>, Option<ChainBreak>) {
    let Some(bytes) = checkpoint else {
        return (Start::BEGINNING, None, None);
    };
    match open_checkpoint(bytes, volume_id, keys_for) {
        Ok(c) => {
            if segments.iter().all(|(n, _)| *n <= c.segment) {
                let b = ChainBreak {
                    segment: c.segment + 1,
                    offset: 0,
                    expected_seq: c.last_seq + 1,
                    reason: format!(
                        "the log after the prune checkpoint (segments from {}) is gone",
                        c.segment + 1
                    ),
                    resumed_seq: None,
                };
                return (Start::after(&c), Some(c), Some(b));
            }
            (Start::after(&c), Some(c), None)
        }
        Err(why) => {
            let b = ChainBreak {
                segment: 0,
                offset: 0,
                expected_seq: 1,
                reason: format!("{why}; verifying from segment 1"),
                resumed_seq: None,
            };
            (Start::BEGINNING, None, Some(b))
        }
    }
}

pub(super) type KeysFor<'k> = dyn FnMut(u32) -> Option<Arc<AuditKeys>> + 'k;

struct Walk<'w> {
    report: ChainReport,
    seen: &'w mut dyn FnMut(Seen<'_>),
    /// Index of a break still waiting for the record it resumes at.
    pending: Option<usize>,
}

impl Walk<'_> {
    fn brk(&mut self, segment: u64, offset: usize, expected: Option<u64>, reason: String) {
        self.report.breaks.push(ChainBreak {
            segment,
            offset: offset as u64,
            expected_seq: expected.unwrap_or(0),
            reason,
            resumed_seq: None,
        });
        if self.pending.is_none() {
            self.pending = Some(self.report.breaks.len() - 1);
        }
    }

    /// Hands the breaks waiting since index `i` to the caller.
    fn flush(&mut self, i: usize, resumed: Option<u64>) {
        for b in &mut self.report.breaks[i..] {
            b.resumed_seq = resumed;
        }
        for b in &self.report.breaks[i..] {
            (self.seen)(Seen::Break(b));
        }
    }

    fn accept(&mut self, segment: u64, rec: &AuditRecord, mac: &[u8; MAC_LEN]) {
        if let Some(i) = self.pending.take() {
            self.flush(i, Some(rec.seq));
        }
        self.report.records += 1;
        self.report.last_seq = rec.seq;
        (self.seen)(Seen::Record { segment, rec, mac });
    }
}

/// Looks for the next record at or after `from` in a segment's `bytes`
/// that verifies against the 32 bytes just before it (the stored MAC of
/// whatever precedes it: the previous record's, or the header's). Cheap
/// filters (a possible length, a plausible sequence number) come before
/// any MAC; `budget` bounds the bytes MACed, so crafted input cannot make
/// the walk slow.
fn resync(
    bytes: &[u8],
    from: usize,
    expected: Option<u64>,
    keys: &AuditKeys,
    budget: &mut usize,
) -> Option<usize> {
    let ahead = (bytes.len() / MIN_RECORD) as u64 + 1;
    for p in from.max(SEGMENT_HEADER_LEN)..bytes.len() {
        let rest = &bytes[p..];
        if rest.len() < MIN_RECORD {
            return None;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if !(NONCE_LEN + TAG_LEN..=MAX_BODY).contains(&len) {
            continue;
        }
        let total = RECORD_PREFIX + len + MAC_LEN;
        if rest.len() < total {
            continue;
        }
        let seq = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        let plausible = match expected {
            Some(e) => seq >= e && seq - e <= ahead,
            None => seq >= 1,
        };
        if !plausible {
            continue;
        }
        if *budget < total {
            return None;
        }
        *budget -= total;
        let prev: [u8; MAC_LEN] = bytes[p - MAC_LEN..p].try_into().expect("32 bytes");
        if record_mac(keys, &prev, &rest[..total - MAC_LEN])
            .verify_slice(&rest[total - MAC_LEN..total])
            .is_ok()
        {
            return Some(p);
        }
    }
    None
}

pub(super) fn walk<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
    start: Start,
    seen: &mut dyn FnMut(Seen<'_>),
) -> ChainReport {
    let mut w = Walk {
        report: ChainReport::default(),
        seen,
        pending: None,
    };
    let segments: Vec<(u64, &[u8])> = segments
        .into_iter()
        .filter(|(n, _)| *n >= start.segment)
        .collect();
    let n = segments.len();
    let mut expected_seg = start.segment;
    let mut expected_seq = start.seq;
    let mut prev_end = start.prev;
    let mut last_keys: Option<Arc<AuditKeys>> = None;
    for (i, (number, bytes)) in segments.into_iter().enumerate() {
        let last = i + 1 == n;
        w.report.segments += 1;
        w.report.end = None;
        if number != expected_seg {
            let reason = if number == expected_seg + 1 {
                format!("segment {expected_seg} is missing (found {number} next)")
            } else {
                format!(
                    "segments {expected_seg}-{} are missing (found {number} next)",
                    number - 1
                )
            };
            w.brk(number, 0, expected_seq, reason);
            prev_end = None;
        }
        expected_seg = number + 1;
        let mut header_mac = None;
        let keys = match parse_header(bytes) {
            Err(e) => {
                w.brk(number, 0, expected_seq, format!("segment header: {e}"));
                last_keys.clone()
            }
            Ok(h) if &h.volume_id != volume_id => {
                w.brk(number, 0, expected_seq, "segment of another volume".into());
                // Records of another volume never verify under this
                // volume's keys; an edited volume id costs no record.
                last_keys.clone()
            }
            Ok(h) => match keys_for(h.key_version) {
                None => {
                    w.brk(
                        number,
                        0,
                        expected_seq,
                        format!(
                            "cannot verify: master key version {} is destroyed or unknown",
                            h.key_version
                        ),
                    );
                    (w.seen)(Seen::NoKey { segment: number });
                    // An edited version field: the records may still
                    // verify under the previous segment's key.
                    last_keys.clone()
                }
                Some(k) => {
                    match check_header(bytes, &k) {
                        Err(e) => w.brk(number, 0, expected_seq, e.to_string()),
                        Ok(mac) => {
                            header_mac = Some(mac);
                            check_segment_start(
                                &mut w,
                                number,
                                &h,
                                expected_seq,
                                prev_end.as_ref(),
                            );
                            expected_seq = Some(h.first_seq);
                            (w.seen)(Seen::Header {
                                segment: number,
                                first_seq: h.first_seq,
                                mac: &mac,
                            });
                        }
                    }
                    Some(k)
                }
            },
        };
        let Some(keys) = keys else {
            prev_end = None;
            expected_seq = None;
            continue;
        };
        last_keys = Some(keys.clone());
        if bytes.len() < SEGMENT_HEADER_LEN {
            prev_end = None;
            continue;
        }
        // Without a verified header, the first record is looked for as
        // after any break.
        let mut budget = 16 * bytes.len() + (1 << 20);
        let mut off = SEGMENT_HEADER_LEN;
        let mut chain = match header_mac {
            Some(m) => m,
            None => match resync(bytes, off, expected_seq, &keys, &mut budget) {
                Some(p) => {
                    off = p;
                    bytes[p - MAC_LEN..p].try_into().expect("32 bytes")
                }
                None => {
                    prev_end = None;
                    continue;
                }
            },
        };
        let mut reached_end = true;
        // After a resynchronisation the break already says which records
        // are lost: the record found next is not a second break.
        let mut resynced = header_mac.is_none();
        loop {
            match decode_record(&bytes[off..], &chain, &keys) {
                Ok(RecordStep::End) => break,
                Ok(RecordStep::Torn(left)) => {
                    if last {
                        w.report.torn_tail_bytes = left as u64;
                    } else {
                        w.brk(
                            number,
                            off,
                            expected_seq,
                            "segment ends inside a record (truncated)".into(),
                        );
                        reached_end = false;
                    }
                    break;
                }
                Ok(RecordStep::Record(rec, len, mac)) => {
                    let skipped_ahead = resynced && expected_seq.is_none_or(|e| rec.seq >= e);
                    resynced = false;
                    if let Some(e) = expected_seq.filter(|e| *e != rec.seq && !skipped_ahead) {
                        w.brk(
                            number,
                            off,
                            Some(e),
                            format!("found record {} (removed or reordered)", rec.seq),
                        );
                    }
                    w.accept(number, &rec, &mac);
                    expected_seq = Some(rec.seq + 1);
                    chain = mac;
                    off += len;
                }
                Err(e) => {
                    let seq_here = bytes
                        .get(off + 4..off + 12)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                    let reason = match (&e, seq_here, expected_seq) {
                        (AuditFormatError::RecordMac, Some(s), Some(x)) if s != x => {
                            format!("found record {s} (removed or reordered)")
                        }
                        _ => e.to_string(),
                    };
                    w.brk(number, off, expected_seq, reason);
                    match resync(bytes, off + 1, expected_seq, &keys, &mut budget) {
                        Some(p) => {
                            off = p;
                            chain = bytes[p - MAC_LEN..p].try_into().expect("32 bytes");
                            resynced = true;
                        }
                        None => {
                            reached_end = false;
                            break;
                        }
                    }
                }
            }
        }
        if reached_end {
            prev_end = Some(chain);
            w.report.end = Some(AuditHead {
                segment: number,
                seq: expected_seq.map_or(0, |s| s - 1),
                chain_mac: chain,
            });
        } else {
            prev_end = None;
        }
    }
    if let Some(i) = w.pending.take() {
        w.flush(i, None);
    }
    w.report
}

/// The checks of a verified segment header against what the walk expects:
/// its number, its first sequence number, its link to the previous segment.
fn check_segment_start(
    w: &mut Walk<'_>,
    number: u64,
    h: &super::SegmentHeader,
    expected_seq: Option<u64>,
    prev_end: Option<&[u8; MAC_LEN]>,
) {
    if h.segment != number {
        w.brk(
            number,
            0,
            expected_seq,
            format!(
                "segment header says segment {}; segments were renamed or swapped",
                h.segment
            ),
        );
    }
    match expected_seq {
        Some(e) if h.first_seq > e => w.brk(
            number,
            0,
            Some(e),
            format!(
                "segment header says it starts at record {}; records {e}-{} were removed",
                h.first_seq,
                h.first_seq - 1
            ),
        ),
        Some(e) if h.first_seq < e => w.brk(
            number,
            0,
            Some(e),
            format!(
                "segment header says it starts at record {}; records before it were repeated or segments swapped",
                h.first_seq
            ),
        ),
        _ => {
            if let Some(p) = prev_end {
                if *p != h.prev_mac {
                    w.brk(
                        number,
                        0,
                        expected_seq,
                        "segment does not chain from the end of the previous one (records removed at a segment end)"
                            .into(),
                    );
                }
            }
        }
    }
}

/// Verifies segments given in file order as `(segment number from the file
/// name, bytes)`. `keys_for` yields the audit keys of a master key version
/// (None if destroyed or unknown). Each verified record goes to
/// `on_record`. Every break is reported, and the walk resumes at the next
/// record or segment that verifies.
pub fn verify_chain<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
    on_record: &mut dyn FnMut(&AuditRecord),
) -> ChainReport {
    verify_chain_anchored(segments, volume_id, keys_for, None, &mut |e| {
        if let ChainEvent::Record(r) = e {
            on_record(r)
        }
    })
}

/// [`verify_chain`] with every record and break given to `on_event` in log
/// order; and with the keyring's `anchor`: a log that no longer reaches
/// the anchored head (records or segments cut, the whole log deleted) or
/// that records a newer keyring generation after it (an older keyring put
/// back) is broken too, even when what is left chains (that break comes
/// last).
pub fn verify_chain_anchored<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
    anchor: Option<&KeyringAnchor>,
    on_event: &mut dyn FnMut(ChainEvent<'_>),
) -> ChainReport {
    verify_log_view(segments, None, volume_id, keys_for, anchor, on_event)
}

/// [`verify_chain_anchored`] of a log that may have been pruned:
/// `checkpoint` is the prune checkpoint's bytes, if the file exists. One
/// that verifies makes the walk start right after what was pruned (the
/// next segment must chain from it); one that does not is a break, and the
/// walk starts at segment 1 (so the pruned segments show as missing). A
/// keyring anchor inside the pruned part counts as reached; the keyring
/// generations the pruned records named still count for the rollback check.
pub fn verify_log_view<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    checkpoint: Option<&[u8]>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
    anchor: Option<&KeyringAnchor>,
    on_event: &mut dyn FnMut(ChainEvent<'_>),
) -> ChainReport {
    let segments: Vec<(u64, &[u8])> = segments.into_iter().collect();
    let (start, ckpt, ckpt_break) = start_of(&segments, checkpoint, volume_id, keys_for);
    if let Some(b) = &ckpt_break {
        on_event(ChainEvent::Break(b));
    }
    let mut finder = anchor.map(|a| {
        let mut f = Finder::new(a.head);
        if let Some(c) = &ckpt {
            f.start_after(c);
        }
        f
    });
    let leftovers = ckpt.map_or(0, |c| {
        segments.iter().filter(|(n, _)| *n <= c.segment).count() as u64
    });
    let mut report = walk(segments, volume_id, keys_for, start, &mut |s| {
        match &s {
            Seen::Record { rec, .. } => on_event(ChainEvent::Record(rec)),
            Seen::Break(b) => on_event(ChainEvent::Break(b)),
            _ => {}
        }
        if let Some(f) = &mut finder {
            f.see(&s);
        }
    });
    report.pruned = ckpt.map(|c| PrunedInfo::of(&c, leftovers));
    if let Some(b) = ckpt_break {
        report.breaks.insert(0, b);
    }
    let (Some(a), Some(f)) = (anchor, finder) else {
        return report;
    };
    let end = report.segments;
    let reason = match f.result(report.segments == 0) {
        AnchorCheck::Present {
            last_keyring_generation: Some(g),
            ..
        } if g > a.keyring_generation => format!(
            "the log records keyring generation {g} after the keyring's anchor, but the keyring is generation {}: an older keyring was put back",
            a.keyring_generation
        ),
        AnchorCheck::Present { .. } => return report,
        AnchorCheck::Missing(why) | AnchorCheck::Unverifiable(why) => why,
    };
    let b = ChainBreak {
        segment: a.head.segment.max(end),
        offset: 0,
        expected_seq: a.head.seq,
        reason,
        resumed_seq: None,
    };
    on_event(ChainEvent::Break(&b));
    report.breaks.push(b);
    report
}

/// Whether a head is still in the log, and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// The head is in the log: the chain value after record `seq` of its
    /// segment is the anchored one.
    Present {
        /// Verified records after the head.
        records_after: u64,
        /// The keyring generation named by the last record after the head
        /// that names one (None: no keyring change was recorded since).
        last_keyring_generation: Option<u64>,
    },
    /// The log no longer reaches the head: records or segments were cut,
    /// the log was replaced by another or rolled back, or it is gone.
    Missing(String),
    /// The head's segment is there but cannot be verified (its master key
    /// version is destroyed).
    Unverifiable(String),
}

/// Looks for a head during a walk.
struct Finder {
    head: AuditHead,
    found: Option<Result<(), String>>,
    no_key: bool,
    seen_segment: bool,
    last_seq_seen: Option<u64>,
    records_after: u64,
    last_generation: Option<u64>,
}

impl Finder {
    fn new(head: AuditHead) -> Self {
        Finder {
            head,
            found: None,
            no_key: false,
            seen_segment: false,
            last_seq_seen: None,
            records_after: 0,
            last_generation: None,
        }
    }

    /// The walk starts after a prune checkpoint: a head in the pruned part
    /// was reached (the prune verified the log through it), and the last
    /// keyring generation a pruned record named counts as seen after it
    /// (generations only grow, so if that record came before the head its
    /// generation is not above the keyring's anyway).
    fn start_after(&mut self, c: &PruneCheckpoint) {
        let h = self.head;
        if h.segment > c.segment {
            return;
        }
        self.found = Some(if h.seq <= c.last_seq {
            if c.last_keyring_generation > 0 {
                self.last_generation = Some(c.last_keyring_generation);
            }
            Ok(())
        } else {
            Err(format!(
                "the keyring's anchor (segment {}, record {}) lies in a pruned segment but after the last pruned record ({}): the log was replaced or rolled back",
                h.segment, h.seq, c.last_seq
            ))
        });
    }

    fn see(&mut self, s: &Seen<'_>) {
        let h = self.head;
        if let Some(Ok(())) = self.found {
            if let Seen::Record { rec, .. } = s {
                self.records_after += 1;
                if rec.keyring_generation.is_some() {
                    self.last_generation = rec.keyring_generation;
                }
            }
            return;
        }
        if self.found.is_some() {
            return;
        }
        match *s {
            Seen::Header {
                segment,
                first_seq,
                mac,
            } if segment == h.segment => {
                self.seen_segment = true;
                if first_seq == h.seq + 1 {
                    self.found = Some(if *mac == h.chain_mac {
                        Ok(())
                    } else {
                        Err(format!(
                            "segment {segment} of the audit log is not the one the keyring anchored (another header): the log was replaced or rolled back"
                        ))
                    });
                }
            }
            Seen::Record { segment, rec, mac } if segment == h.segment => {
                self.seen_segment = true;
                self.last_seq_seen = Some(rec.seq);
                if rec.seq == h.seq {
                    self.found = Some(if *mac == h.chain_mac {
                        Ok(())
                    } else {
                        Err(format!(
                            "record {} in segment {segment} of the audit log is not the one the keyring anchored: the log was replaced or rolled back",
                            h.seq
                        ))
                    });
                }
            }
            Seen::NoKey { segment } if segment == h.segment => self.no_key = true,
            _ => {}
        }
    }

    fn result(self, log_empty: bool) -> AnchorCheck {
        let h = self.head;
        match self.found {
            Some(Ok(())) => AnchorCheck::Present {
                records_after: self.records_after,
                last_keyring_generation: self.last_generation,
            },
            Some(Err(why)) => AnchorCheck::Missing(why),
            None if self.no_key => AnchorCheck::Unverifiable(format!(
                "segment {} of the audit log, which holds the keyring's anchor (record {}), cannot be verified: its master key version is destroyed",
                h.segment, h.seq
            )),
            None if log_empty => AnchorCheck::Missing(format!(
                "the audit log is gone, but the keyring says it reached record {} (segment {}): the log was deleted",
                h.seq, h.segment
            )),
            None if !self.seen_segment => AnchorCheck::Missing(format!(
                "segment {} of the audit log, which holds the keyring's anchor (record {}), is missing or does not verify",
                h.segment, h.seq
            )),
            None => AnchorCheck::Missing(format!(
                "segment {} of the audit log ends at record {} before the keyring's anchor (record {}): records were cut off",
                h.segment,
                self.last_seq_seen.map_or_else(|| "0".to_string(), |s| s.to_string()),
                h.seq
            )),
        }
    }
}

/// Checks that `head` (the keyring's anchor) is still in the log given as
/// `(segment number, bytes)` in file order: its segment is there, the
/// record at its sequence number verifies and ends with its chain value
/// (or, for a head right after a segment header, the header's MAC is that
/// value). Only the head's segment and those after it are read (earlier
/// ones may be given with empty bytes: they only show that the log is not
/// empty); breaks before it are [`verify_chain`]'s to report. A head in
/// the part a verified prune `checkpoint` covers counts as present.
pub fn check_anchor<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    checkpoint: Option<&[u8]>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
    head: &AuditHead,
) -> AnchorCheck {
    let mut finder = Finder::new(*head);
    let mut start = Start {
        segment: head.segment,
        seq: None,
        prev: None,
    };
    if let Some(c) = checkpoint.and_then(|b| open_checkpoint(b, volume_id, keys_for).ok()) {
        if head.segment <= c.segment {
            finder.start_after(&c);
            start = Start::after(&c);
        }
    }
    let segments: Vec<(u64, &[u8])> = segments.into_iter().collect();
    let empty = segments.is_empty();
    walk(segments, volume_id, keys_for, start, &mut |s| {
        finder.see(&s)
    });
    finder.result(empty)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
