//! The audit log's retention rule (issue 21, item 13): kept in the keyring
//! (so that nobody with only the cipher dir can shorten it), changed like
//! any key setting (recorded first), and applied by the mount's schedule.
//!
//! Owns: validating and storing the rule, and turning it into a
//! [`PruneRule`] for [`AuditLog::prune`].
//! Must never: prune without a rule the keyring holds, or accept a rule
//! below the floors without `allow_short`.

use crate::format::audit::PruneRule;
use crate::format::config::parse_duration_with_unit;
use crate::format::keyring::AuditRetention;
use crate::policy::audit::{AuditLog, PruneOutcome};

use super::{KeyError, KeyService};

/// The shortest `max_age` accepted without `allow_short`.
pub const MIN_RETENTION_AGE_SECS: u64 = 86_400;
/// The smallest `max_bytes` accepted without `allow_short` (two default
/// segments: pruning works in whole segments).
pub const MIN_RETENTION_BYTES: u64 = 16 << 20;

/// Checks a retention rule against the floors; the canonical rule.
pub fn validate_retention(
    max_age: Option<&str>,
    max_bytes: Option<u64>,
    allow_short: bool,
) -> Result<Option<AuditRetention>, KeyError> {
    if let Some(a) = max_age {
        let secs = parse_duration_with_unit(a).map_err(KeyError::Invalid)?;
        if secs < MIN_RETENTION_AGE_SECS && !allow_short {
            return Err(KeyError::Invalid(format!(
                "a retention age of {a} is shorter than a day; pass allow_short (--allow-short) to set it anyway"
            )));
        }
    }
    if let Some(b) = max_bytes {
        if b == 0 || (b < MIN_RETENTION_BYTES && !allow_short) {
            return Err(KeyError::Invalid(format!(
                "a retention size of {b} bytes is below {MIN_RETENTION_BYTES} (the log is pruned in whole segments of 8 MiB); pass allow_short (--allow-short) to set it anyway"
            )));
        }
    }
    Ok(
        (max_age.is_some() || max_bytes.is_some()).then(|| AuditRetention {
            max_age: max_age.map(str::to_string),
            max_bytes,
        }),
    )
}

/// The prune rule a retention rule means at `now_ms`.
pub fn prune_rule(r: &AuditRetention, now_ms: u64) -> PruneRule {
    PruneRule {
        before_ms: r
            .max_age
            .as_deref()
            .and_then(|a| parse_duration_with_unit(a).ok())
            .map(|secs| now_ms.saturating_sub(secs.saturating_mul(1000))),
        max_bytes: r.max_bytes,
    }
}

impl KeyService<'_> {
    /// The audit log's retention rule (None: keep everything).
    pub fn audit_retention(&self) -> Option<AuditRetention> {
        self.vol.keyring().read().audit_retention().cloned()
    }

    /// Sets (or, with neither limit, clears) the retention rule: recorded
    /// in the audit log, stored in the keyring. Layout-1 keyrings have no
    /// room for it (`sealfs upgrade` first).
    pub fn set_audit_retention(
        &self,
        max_age: Option<&str>,
        max_bytes: Option<u64>,
        allow_short: bool,
    ) -> Result<Option<AuditRetention>, KeyError> {
        let rule = validate_retention(max_age, max_bytes, allow_short)?;
        if self.vol.keyring().read().layout() != 2 {
            return Err(KeyError::Invalid(
                "this volume's keyring predates keyslots and has no room for a retention rule; run `sealfs upgrade CIPHERDIR` first".into(),
            ));
        }
        let detail = match &rule {
            None => "off".to_string(),
            Some(r) => format!(
                "max_age={} max_bytes={}",
                r.max_age.as_deref().unwrap_or("none"),
                r.max_bytes.map_or("none".to_string(), |b| b.to_string())
            ),
        };
        let stored = rule.clone();
        self.change("set_audit_retention", None, Some(detail), move |k| {
            k.set_audit_retention(stored)
        })?;
        if let Some(log) = self.log() {
            log.retention_changed();
        }
        Ok(rule)
    }

    /// Applies the retention rule to the mount's log when it is due (see
    /// [`AuditLog::retention_due`]); what was pruned, if anything.
    pub fn apply_audit_retention(&self, now_ms: u64) -> Result<Option<PruneOutcome>, KeyError> {
        let (Some(log), Some(r)) = (self.log(), self.audit_retention()) else {
            return Ok(None);
        };
        if !log.retention_due() {
            return Ok(None);
        }
        let out = log
            .prune(prune_rule(&r, now_ms), AuditLog::daemon_record().principal)
            .map_err(|e| KeyError::AuditFailed(e.to_string()))?;
        Ok(Some(out))
    }
}
