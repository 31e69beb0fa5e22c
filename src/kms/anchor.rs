//! Rollback detection (issue 16, finding 3, keyring side; issue 17's
//! external anchor): the keyring's generation against what the audit log
//! and the KMS recorded.
//!
//! *Local anchor.* Every keyring store records the audit log's head in the
//! keyring (sealed), and every keyring change is audited with the
//! generation it makes: first the change's own record (generation `g`,
//! written before the store: it proves `g − 1` was stored), then a
//! `keyring_stored` record (proves `g`). At open, the log must still hold
//! the keyring's anchor (the folder, the segment, the record there with its
//! chain value), and no record after it may prove a generation above the
//! keyring's. A crash between a change's record and its store proves only
//! `g − 1`: no false alarm.
//!
//! *External anchor.* With a Transit slot, the generation is also kept in
//! an OpenBao KV v2 entry (check-and-set, never lowered); a keyring below
//! it was restored from an older copy of the whole cipher dir, which the
//! local anchor cannot see (the log rolls back with it).
//!
//! Owns: these two checks, what an accepted rollback does (the acceptance
//! recorded, the next store put above every recorded generation), and the
//! KMS anchor update after a store.
//! Must never: let a rollback through without `--accept-rollback`, or
//! block a mounted volume's I/O on the KMS.

use crate::format::keyring::AuditAnchor;
use crate::keyring::ProviderError;
use crate::policy::audit_head::{records_since, AuditHead, HeadError};
use crate::policy::audit_stream::AuditStream;
use crate::volume::Volume;

use super::{KeyError, KeyService};

/// What the rollback checks found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AnchorReport {
    /// The keyring's layout (1 has no anchor and is not checked).
    pub layout: u16,
    /// The keyring's generation.
    pub keyring_generation: u32,
    /// The highest generation the audit log proves was stored after the
    /// keyring's anchor (`None`: no record says).
    pub log_generation: Option<u32>,
    /// The generation the KMS anchor holds (`None`: no KMS slot unlocked
    /// the volume, or no entry yet).
    pub kms_generation: Option<u32>,
    /// What is wrong, if anything: a rollback (or an audit log that lost
    /// what the keyring saw).
    pub problem: Option<String>,
}

/// A rollback the caller accepted (`--accept-rollback`): recorded in the
/// audit log, and the keyring stored above every recorded generation, by
/// [`KeyService::accept_rollback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRollback {
    /// What the check found.
    pub problem: String,
}

/// The generation a record proves was stored.
fn proven(rec: &crate::format::audit::AuditRecord) -> Option<u32> {
    // A generation that does not fit the keyring's u32 proves nothing.
    u32::try_from(rec.keyring_generation?).ok()?;
    u32::try_from(rec.proven_keyring_generation()?).ok()
}

/// Runs both checks. A KMS that cannot be asked is an error (the anchor
/// cannot be verified), not a problem found.
///
/// Every audit stream is read (docs/FORMAT.md §12.4): the local one from
/// the keyring's anchor, each host's from its own anchor in the keyring
/// (a host stream the keyring anchors must still be there), and a stream
/// the keyring does not anchor from its start. No record in any of them
/// may prove a generation above the keyring's.
pub fn check(vol: &Volume) -> Result<AnchorReport, KeyError> {
    let (layout, generation, anchor, stream_anchors, authority) = {
        let kr = vol.keyring().read();
        (
            kr.layout(),
            kr.generation(),
            kr.anchor(),
            kr.stream_anchors().clone(),
            kr.authority().cloned(),
        )
    };
    let mut report = AnchorReport {
        layout,
        keyring_generation: generation,
        log_generation: None,
        kms_generation: None,
        problem: None,
    };
    if layout < 2 {
        return Ok(report);
    }
    let mut streams: std::collections::BTreeSet<AuditStream> = AuditStream::list(vol.root())
        .map_err(|e| KeyError::Volume(e.into()))?
        .into_iter()
        .collect();
    for host in stream_anchors.keys() {
        // Hosts were checked when the keyring was decoded.
        if let Some(s) = AuditStream::from_name(Some(host)) {
            streams.insert(s);
        }
    }
    let mut max: Option<u32> = None;
    let mut problems = Vec::new();
    for stream in &streams {
        let head = match stream.host() {
            None => anchor,
            Some(h) => stream_anchors.get(h.as_str()).copied(),
        }
        .map(AuditHead::from);
        match records_since(vol, stream, head.as_ref(), &mut |r| {
            if let Some(g) = proven(r) {
                max = Some(max.map_or(g, |m| m.max(g)));
            }
        }) {
            Ok(since) => {
                // The pruned records proved these generations before the
                // prune: they count as if still in the log.
                if let Some(g) = since
                    .pruned_proven_generation
                    .and_then(|g| u32::try_from(g).ok())
                {
                    max = Some(max.map_or(g, |m| m.max(g)));
                }
            }
            Err(HeadError::Io(e)) => return Err(KeyError::Volume(e.into())),
            Err(e) => problems.push(match stream {
                AuditStream::Local => e.to_string(),
                AuditStream::Host(_) => format!("{stream}'s audit stream: {e}"),
            }),
        }
    }
    if !problems.is_empty() {
        report.problem = Some(problems.join("; "));
    }
    report.log_generation = max;
    if report.problem.is_none() {
        if let Some(m) = max.filter(|m| *m > generation) {
            report.problem = Some(format!(
                "the keyring is generation {generation}, but the audit log records that generation {m} was stored (an older copy of the keyring was put back)"
            ));
        }
    }
    if let Some(a) = authority {
        let kms = a.anchored_generation()?;
        report.kms_generation = kms;
        if let Some(k) = kms.filter(|k| *k > generation) {
            let what = format!(
                "the keyring is generation {generation}, but the KMS anchor ({}) records generation {k}: the cipher dir (keyring and audit log together) was restored from an older copy",
                a.last_seen().target
            );
            report.problem = Some(match report.problem.take() {
                Some(p) => format!("{p}; and {what}"),
                None => what,
            });
        }
    }
    Ok(report)
}

/// Runs [`check`] and refuses a rollback unless `accept`. An accepted one
/// makes the next keyring store write a generation above every recorded
/// one; the caller then records it with [`KeyService::accept_rollback`].
pub fn check_or_refuse(vol: &Volume, accept: bool) -> Result<Option<AcceptedRollback>, KeyError> {
    let mut r = check(vol)?;
    // On shared storage another host may have stored a newer keyring (and
    // recorded it in its stream) since this one was read: follow it and
    // look again before calling it a rollback.
    for _ in 0..3 {
        if r.problem.is_none() || vol.shared().is_none() {
            break;
        }
        if !vol.refresh_keyring()? {
            break;
        }
        r = check(vol)?;
    }
    let Some(problem) = r.problem else {
        return Ok(None);
    };
    if !accept {
        return Err(KeyError::Rollback(problem));
    }
    tracing::warn!("rollback accepted: {problem}");
    let above = [
        r.log_generation,
        r.kms_generation,
        Some(r.keyring_generation),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0)
    .saturating_add(1);
    let mut kr = vol.keyring().write();
    kr.raise_next_generation(above);
    // The old anchor may point into a log that is gone: the acceptance's
    // store anchors afresh (or not at all, without a log).
    kr.clear_anchors();
    Ok(Some(AcceptedRollback { problem }))
}

/// Records `generation` in the KMS after a store, if a KMS slot unlocked
/// the volume (best effort: a KMS left behind only weakens its anchor,
/// it never refuses a later open). Bounded by the client's time budget.
pub fn record_in_kms(vol: &Volume, generation: u32) {
    let Some(a) = vol.keyring().read().authority().cloned() else {
        return;
    };
    if let Err(e) = a.anchor_generation(generation) {
        tracing::warn!("keyring generation {generation} not recorded in the KMS: {e}");
    }
}

impl KeyService<'_> {
    /// Records an accepted rollback and stores the keyring above every
    /// recorded generation, anchored at the log's head now.
    pub fn accept_rollback(&self, accepted: &AcceptedRollback) -> Result<(), KeyError> {
        self.change(
            "rollback_accepted",
            None,
            Some(accepted.problem.clone()),
            |_| Ok(()),
        )
    }

    /// Stores the keyring anchored at the log's head now (at mount, after
    /// the log is open, and at unmount), recording `op` with `detail` (the
    /// slot that unlocked the volume).
    pub fn anchor_here(&self, op: &str, detail: Option<String>) -> Result<(), KeyError> {
        if self.vol.read_only() {
            // Nothing may be stored: the event alone is recorded.
            return match self.log() {
                Some(log) => self.record(log, op, None, detail, None),
                None => Ok(()),
            };
        }
        self.change(op, None, detail, |_| Ok(()))
    }

    /// Asks the KMS behind the unlocking slot (if any) whether it still
    /// lets the volume unlock; its answer shows in `ctl status`.
    pub fn check_kms(&self) -> Result<(), KeyError> {
        let Some(a) = self.vol.keyring().read().authority().cloned() else {
            return Ok(());
        };
        a.check().map_err(|e: ProviderError| KeyError::Kms(e))
    }
}

/// The anchor as `ctl status` and `info` show it.
pub fn describe(a: Option<AuditAnchor>) -> Option<String> {
    a.map(|a| format!("audit segment {}, record {}", a.segment, a.seq))
}
