//! The audit log's head and the check that a head recorded earlier (the
//! keyring's rollback anchor) is still in the log: the audit side of
//! issue 16's rollback anchor. The keyring side (what the records after
//! the head must not say) is [`crate::kms`]'s.
//!
//! Written by the keyslot work as the minimal version the anchor needs;
//! [`AuditLog::head`](super::audit::AuditLog::head) gives the head of a
//! live log.
//!
//! Owns: [`AuditHead`] and [`records_since`] (verify from the head's
//! segment to the end, hand every record after the head to the caller).
//! Must never: write to the log, or call a log that lost the head's record
//! intact.

use crate::format::audit::{
    self as afmt, AuditKeys, AuditRecord, RecordStep, MAC_LEN, SEGMENT_HEADER_LEN,
};
use crate::format::keyring::AuditAnchor;
use crate::volume::Volume;

use super::audit_stream::AuditStream;

/// A position in the audit log: after the last record of `segment`,
/// whose next record is `seq`, with the chain value `chain_mac` so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// Segment number.
    pub segment: u64,
    /// Sequence number of the next record.
    pub seq: u64,
    /// Chain value after the last record (the segment header's MAC when
    /// the segment has no record yet).
    pub chain_mac: [u8; MAC_LEN],
}

impl From<AuditHead> for AuditAnchor {
    fn from(h: AuditHead) -> Self {
        AuditAnchor {
            segment: h.segment,
            seq: h.seq,
            chain_mac: h.chain_mac,
        }
    }
}

impl From<AuditAnchor> for AuditHead {
    fn from(a: AuditAnchor) -> Self {
        AuditHead {
            segment: a.segment,
            seq: a.seq,
            chain_mac: a.chain_mac,
        }
    }
}

/// Why the log does not reach a head, or is broken after it.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// No segment at all.
    #[error("the audit log is gone (sealfs.audit/ is missing or empty), but the keyring was stored when it had reached segment {segment}, record {seq}")]
    LogMissing {
        /// The head's segment.
        segment: u64,
        /// The head's next record.
        seq: u64,
    },
    /// The head's segment is not there.
    #[error("audit segment {segment} (where the keyring's anchor points, record {seq}) is missing ({found})")]
    SegmentMissing {
        /// The head's segment.
        segment: u64,
        /// The head's next record.
        seq: u64,
        /// What is there instead.
        found: String,
    },
    /// The head's segment no longer reaches the head.
    #[error("the audit log no longer reaches the keyring's anchor (segment {segment}, before record {seq}): {reason}")]
    Shortened {
        /// The head's segment.
        segment: u64,
        /// The head's next record.
        seq: u64,
        /// What was found.
        reason: String,
    },
    /// The chain breaks after the head.
    #[error("the audit log is broken after the keyring's anchor: segment {segment}: {reason}")]
    Broken {
        /// Where.
        segment: u64,
        /// What.
        reason: String,
    },
    /// The log could not be read.
    #[error("audit log I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn keys_for<'a>(
    vol: &'a Volume,
    stream: &'a AuditStream,
) -> impl FnMut(u32) -> Option<std::sync::Arc<AuditKeys>> + 'a {
    let mut cache = std::collections::HashMap::new();
    move |v| {
        if let Some(k) = cache.get(&v) {
            return Some(std::sync::Arc::clone(k));
        }
        let kr = vol.keyring().read();
        let k = std::sync::Arc::new(stream.keys(kr.master_key(v)?, &vol.volume_id()));
        cache.insert(v, k.clone());
        Some(k)
    }
}

/// What [`records_since`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Since {
    /// Records handed over.
    pub handed: u64,
    /// When the head lies in a pruned part of the log: the highest keyring
    /// generation the pruned records proved stored (from the prune
    /// checkpoint; docs/FORMAT.md §12.3).
    pub pruned_proven_generation: Option<u64>,
}

/// The prune checkpoint of a stream of `vol`'s log, if there is one that
/// verifies.
fn checkpoint(
    vol: &Volume,
    stream: &AuditStream,
    keys: &mut dyn FnMut(u32) -> Option<std::sync::Arc<AuditKeys>>,
) -> Result<Option<afmt::PruneCheckpoint>, HeadError> {
    let Some(bytes) = super::audit::read_checkpoint(vol.root(), stream)? else {
        return Ok(None);
    };
    Ok(afmt::open_checkpoint(&bytes, &vol.volume_id(), keys).ok())
}

/// Hands every verified record after `head` to `on_record`, after checking
/// that the log still holds `head` (its segment exists, and the chain
/// value at that position is `head.chain_mac`), or that a prune checkpoint
/// that verifies covers it. A record torn by a crash at the very end is
/// not an error. Without a head, every record up to the first break is
/// handed over (a log never anchored has nothing to keep).
pub fn records_since(
    vol: &Volume,
    stream: &AuditStream,
    head: Option<&AuditHead>,
    on_record: &mut dyn FnMut(&AuditRecord),
) -> Result<Since, HeadError> {
    let segs = super::audit::read_segments(vol.root(), stream)?;
    let mut keys = keys_for(vol, stream);
    let Some(h) = head else {
        let checkpoint = super::audit::read_checkpoint(vol.root(), stream)?;
        let report = afmt::verify_log_view(
            segs.iter().map(|(n, b)| (*n, b.as_slice())),
            checkpoint.as_deref(),
            &vol.volume_id(),
            &mut keys,
            None,
            &mut |e| {
                if let afmt::ChainEvent::Record(r) = e {
                    on_record(r)
                }
            },
        );
        return Ok(Since {
            handed: report.records,
            pruned_proven_generation: None,
        });
    };
    if segs.is_empty() {
        return Err(HeadError::LogMissing {
            segment: h.segment,
            seq: h.seq,
        });
    }
    let covering = checkpoint(vol, stream, &mut keys)?.filter(|c| h.segment <= c.segment);
    if let Some(c) = &covering {
        if h.seq > c.last_seq + 1 {
            return Err(HeadError::Shortened {
                segment: h.segment,
                seq: h.seq,
                reason: format!(
                    "the segment was pruned, but only through record {}",
                    c.last_seq
                ),
            });
        }
    }
    let wanted = covering.map_or(h.segment, |c| c.segment + 1);
    let Some(start) = segs.iter().position(|(n, _)| *n == wanted) else {
        let first = segs[0].0;
        let last = segs[segs.len() - 1].0;
        return Err(HeadError::SegmentMissing {
            segment: wanted,
            seq: h.seq,
            found: format!("the log has segments {first} to {last}"),
        });
    };
    let short = |reason: String| HeadError::Shortened {
        segment: h.segment,
        seq: h.seq,
        reason,
    };
    let mut handed = 0;
    let mut reached = covering.is_some();
    let mut chain = covering.map_or([0u8; MAC_LEN], |c| c.chain_mac);
    let mut next_seq = covering.map_or(0, |c| c.last_seq + 1);
    let last = segs.len() - 1;
    for (i, (number, bytes)) in segs.iter().enumerate().skip(start) {
        let broken = |reason: String| HeadError::Broken {
            segment: *number,
            reason,
        };
        let header = afmt::parse_header(bytes).map_err(|e| {
            if reached {
                broken(e.to_string())
            } else {
                short(e.to_string())
            }
        })?;
        let k = keys(header.key_version).ok_or_else(|| {
            let m = format!("no key for master key version {}", header.key_version);
            if reached {
                broken(m)
            } else {
                short(m)
            }
        })?;
        let after_header = afmt::check_header(bytes, &k).map_err(|e| {
            if reached {
                broken(e.to_string())
            } else {
                short(e.to_string())
            }
        })?;
        if header.volume_id != vol.volume_id() || header.segment != *number {
            return Err(short("segment of another volume or renumbered".into()));
        }
        if i == start && covering.is_none() {
            next_seq = header.first_seq;
            chain = after_header;
        } else {
            if i != start && *number != segs[i - 1].0 + 1 {
                return Err(broken(format!("segment {} is missing", segs[i - 1].0 + 1)));
            }
            if header.first_seq != next_seq || header.prev_mac != chain {
                return Err(broken(
                    "does not continue the previous segment's chain".into(),
                ));
            }
            chain = after_header;
        }
        let mut off = SEGMENT_HEADER_LEN;
        loop {
            if !reached && next_seq == h.seq {
                if chain != h.chain_mac {
                    return Err(short(format!(
                        "the records before record {} are not the ones the keyring saw",
                        h.seq
                    )));
                }
                reached = true;
            }
            match afmt::decode_record(&bytes[off..], &chain, &k) {
                Ok(RecordStep::End) => break,
                Ok(RecordStep::Torn(_)) if i == last => break,
                Ok(RecordStep::Torn(_)) => {
                    let m = "segment ends inside a record".to_string();
                    return Err(if reached { broken(m) } else { short(m) });
                }
                Ok(RecordStep::Record(rec, len, mac)) if rec.seq == next_seq => {
                    if reached {
                        on_record(&rec);
                        handed += 1;
                    }
                    chain = mac;
                    next_seq += 1;
                    off += len;
                }
                Ok(RecordStep::Record(rec, ..)) => {
                    let m = format!("record {} where {next_seq} was expected", rec.seq);
                    return Err(if reached { broken(m) } else { short(m) });
                }
                Err(e) => {
                    let m = format!("at record {next_seq}: {e}");
                    return Err(if reached { broken(m) } else { short(m) });
                }
            }
        }
        if !reached {
            return Err(short(format!(
                "segment {number} ends at record {}",
                next_seq.saturating_sub(1)
            )));
        }
    }
    Ok(Since {
        handed,
        pruned_proven_generation: covering
            .map(|c| c.proven_keyring_generation)
            .filter(|g| *g > 0),
    })
}
