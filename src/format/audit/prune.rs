//! Pruning the front of the audit log (docs/FORMAT.md §12.3): which whole
//! segments a retention rule lets go, and the checkpoint that keeps what is
//! left verifiable.
//!
//! Owns: [`plan_prune`] and the report types of a prune.
//! Must never: perform I/O, plan to remove a segment that did not verify
//! to its end or that a break follows, or the segment being written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checkpoint::PruneCheckpoint;
use super::verify::{open_checkpoint, walk, KeysFor, Seen, Start};
use super::{parse_header, MAC_LEN};

/// What a verified prune checkpoint says was removed from the front of the
/// log (docs/FORMAT.md §12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedInfo {
    /// Segments up to this one were pruned.
    pub through_segment: u64,
    /// Records up to this one were pruned.
    pub through_seq: u64,
    /// Records pruned in all (every prune so far).
    pub records_pruned: u64,
    /// Time of the last pruned record, ms since the epoch.
    pub last_record_ms: u64,
    /// When the last prune ran, ms since the epoch.
    pub pruned_ms: u64,
    /// Pruned segments still on disk (a crash in the middle of a prune; the
    /// next prune or mount removes them). Not verified, not a break.
    pub leftover_segments: u64,
}

impl PrunedInfo {
    pub(super) fn of(c: &PruneCheckpoint, leftover_segments: u64) -> Self {
        PrunedInfo {
            through_segment: c.segment,
            through_seq: c.last_seq,
            records_pruned: c.records_pruned,
            last_record_ms: c.last_record_ms,
            pruned_ms: c.pruned_ms,
            leftover_segments,
        }
    }
}

/// What may be pruned: segments whose every record is older than
/// `before_ms`, and the oldest segments while the log is larger than
/// `max_bytes` (either rule, or both: the larger prefix goes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneRule {
    /// Prune segments whose last record is older than this (ms since the epoch).
    pub before_ms: Option<u64>,
    /// Prune the oldest segments until the log's segments total at most this.
    pub max_bytes: Option<u64>,
}

/// What a prune will do: write `checkpoint` (if any segment is newly
/// pruned), then remove the segments in `remove`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    /// The new checkpoint (its `key_version` and `pruned_ms` are the
    /// caller's to set before encoding); None when nothing new is pruned.
    pub checkpoint: Option<PruneCheckpoint>,
    /// Segment numbers to remove, ascending (newly pruned ones and
    /// leftovers of an interrupted prune).
    pub remove: Vec<u64>,
    /// Segments newly pruned.
    pub segments: u64,
    /// Records newly pruned.
    pub records: u64,
    /// Bytes of the newly pruned segments.
    pub bytes: u64,
}

/// Why nothing may be pruned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PruneRefusal {
    /// The existing checkpoint does not verify.
    #[error("{0}; run `sealfs audit verify` and keep the log as it is")]
    Checkpoint(String),
}

#[derive(Default)]
struct SegmentSeen {
    /// (last seq, chain value) at the end of what verified.
    end: Option<(u64, [u8; MAC_LEN])>,
    last_ms: u64,
    records: u64,
    last_generation: Option<u64>,
    proven_generation: Option<u64>,
}

/// Plans a prune of the log given as `(segment number, bytes)` with its
/// current prune `checkpoint` (bytes, if any), under `rule`. Segments
/// numbered `keep_from` and up (the one being written) are kept, and so is
/// every segment from the first one with a break: evidence of tampering is
/// never pruned away. The segment after the last pruned one must be there
/// and chain from it, so what is left verifies.
pub fn plan_prune<'a>(
    segments: impl IntoIterator<Item = (u64, &'a [u8])>,
    checkpoint: Option<&[u8]>,
    volume_id: &[u8; 16],
    keys_for: &mut KeysFor<'_>,
    rule: PruneRule,
    keep_from: u64,
) -> Result<PrunePlan, PruneRefusal> {
    let segments: Vec<(u64, &[u8])> = segments.into_iter().collect();
    let old = match checkpoint {
        None => None,
        Some(b) => Some(open_checkpoint(b, volume_id, keys_for).map_err(PruneRefusal::Checkpoint)?),
    };
    let start = old.as_ref().map_or(Start::BEGINNING, Start::after);
    let mut remove: Vec<u64> = old.map_or(Vec::new(), |c| {
        segments
            .iter()
            .filter(|(n, _)| *n <= c.segment)
            .map(|(n, _)| *n)
            .collect()
    });
    let live: Vec<(u64, &[u8])> = segments
        .iter()
        .copied()
        .filter(|(n, _)| *n >= start.segment)
        .collect();
    let mut seen: BTreeMap<u64, SegmentSeen> = BTreeMap::new();
    let report = walk(
        live.iter().copied(),
        volume_id,
        keys_for,
        start,
        &mut |s| match s {
            Seen::Header {
                segment,
                first_seq,
                mac,
            } => {
                let e = seen.entry(segment).or_default();
                e.end = Some((first_seq.saturating_sub(1), *mac));
            }
            Seen::Record { segment, rec, mac } => {
                let e = seen.entry(segment).or_default();
                e.end = Some((rec.seq, *mac));
                e.last_ms = rec.time_ms;
                e.records += 1;
                if rec.keyring_generation.is_some() {
                    e.last_generation = rec.keyring_generation;
                }
                if let Some(p) = rec.proven_keyring_generation() {
                    e.proven_generation = Some(e.proven_generation.map_or(p, |q| q.max(p)));
                }
            }
            Seen::NoKey { .. } | Seen::Break(_) => {}
        },
    );
    let first_break = report
        .breaks
        .iter()
        .map(|b| b.segment)
        .min()
        .unwrap_or(u64::MAX);
    let total: u64 = live.iter().map(|(_, b)| b.len() as u64).sum();
    // Segments that may go, oldest first: verified to their end, before
    // any break and the kept ones, and followed by another segment.
    let mut candidates = Vec::new();
    for (i, (n, bytes)) in live.iter().enumerate() {
        let ok = *n < keep_from
            && *n < first_break
            && i + 1 < live.len()
            && live[i + 1].0 == n + 1
            && live[i + 1].0 < first_break.saturating_add(1)
            && seen.get(n).is_some_and(|s| s.end.is_some());
        if !ok {
            break;
        }
        let s = &seen[n];
        let last_ms = if s.records > 0 {
            s.last_ms
        } else {
            parse_header(bytes).map_or(0, |h| h.created_ms)
        };
        candidates.push((*n, bytes.len() as u64, last_ms));
    }
    let by_date = rule.before_ms.map_or(0, |before| {
        candidates
            .iter()
            .take_while(|(_, _, ms)| *ms < before)
            .count()
    });
    let by_size = rule.max_bytes.map_or(0, |max| {
        let mut left = total;
        let mut k = 0;
        while left > max && k < candidates.len() {
            left -= candidates[k].1;
            k += 1;
        }
        k
    });
    let k = by_date.max(by_size);
    if k == 0 {
        return Ok(PrunePlan {
            checkpoint: None,
            remove,
            segments: 0,
            records: 0,
            bytes: 0,
        });
    }
    let pruned = &candidates[..k];
    let last = pruned[k - 1].0;
    let mut c = old.unwrap_or(PruneCheckpoint {
        key_version: 0,
        volume_id: *volume_id,
        segment: 0,
        last_seq: 0,
        chain_mac: [0; MAC_LEN],
        last_keyring_generation: 0,
        proven_keyring_generation: 0,
        last_record_ms: 0,
        pruned_ms: 0,
        records_pruned: 0,
    });
    let mut records = 0;
    for (n, _, ms) in pruned {
        let s = &seen[n];
        records += s.records;
        if let Some(g) = s.last_generation {
            c.last_keyring_generation = g;
        }
        if let Some(p) = s.proven_generation {
            c.proven_keyring_generation = c.proven_keyring_generation.max(p);
        }
        if s.records > 0 {
            c.last_record_ms = *ms;
        }
    }
    let (last_seq, chain) = seen[&last].end.expect("candidates verified to their end");
    c.segment = last;
    c.last_seq = last_seq;
    c.chain_mac = chain;
    c.records_pruned += records;
    remove.extend(pruned.iter().map(|(n, _, _)| *n));
    Ok(PrunePlan {
        checkpoint: Some(c),
        remove,
        segments: k as u64,
        records,
        bytes: pruned.iter().map(|(_, b, _)| b).sum(),
    })
}
