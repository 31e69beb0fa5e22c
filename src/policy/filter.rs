//! Filters over audit records: the arguments of `audit_export` on the
//! control socket and of the offline `sealfs audit export`.
//!
//! Owns: parsing the filter arguments (times, principals, path prefixes)
//! and matching a record against them.
//! Must never: read or write the log (that is [`super::audit`]).

use crate::format::audit::AuditRecord;
use crate::format::config::parse_duration_with_unit;
use crate::format::grants as gfmt;
use crate::keyring::now_secs;

/// A time: an absolute UTC time/date, or a duration before now (with a
/// unit: a bare number is refused); ms since the epoch.
pub fn parse_time_filter(s: &str) -> Result<u64, String> {
    let now = now_secs();
    if !s.trim().is_empty() && s.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "'{}' has no unit: give a time like 2026-12-31T00:00Z, a date like 2026-12-31, or a duration ago like 12h or 7d",
            s.trim()
        ));
    }
    if let Ok(d) = parse_duration_with_unit(s) {
        return Ok(now.saturating_sub(d) * 1000);
    }
    gfmt::parse_expiry(s, now)
        .map(|t| t * 1000)
        .map_err(|e| e.to_string())
}

/// A filter over audit records (the `audit export` arguments).
pub struct AuditFilter {
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    principal: Option<(String, u32)>,
    path_prefix: Option<String>,
    op: Option<String>,
}

impl AuditFilter {
    /// Parses the filter arguments (as in the `audit_export` op).
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        principal: Option<&str>,
        path_prefix: Option<&str>,
        op: Option<&str>,
    ) -> Result<AuditFilter, String> {
        let principal = principal
            .map(|p| {
                let (k, n) = p
                    .split_once(':')
                    .ok_or_else(|| format!("principal '{p}' must be uid:N, gid:N or pid:N"))?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| format!("principal '{p}' must be uid:N, gid:N or pid:N"))?;
                match k {
                    "uid" | "gid" | "pid" => Ok((k.to_string(), n)),
                    _ => Err(format!("principal '{p}' must be uid:N, gid:N or pid:N")),
                }
            })
            .transpose()?;
        if let Some(p) = path_prefix {
            gfmt::check_prefix(p).map_err(|e| e.to_string())?;
        }
        Ok(AuditFilter {
            since_ms: since.map(parse_time_filter).transpose()?,
            until_ms: until.map(parse_time_filter).transpose()?,
            principal,
            path_prefix: path_prefix.map(str::to_string),
            op: op.map(str::to_string),
        })
    }

    /// Whether `r` passes.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms < t)
            && self.op.as_ref().is_none_or(|o| &r.op == o)
            && self
                .principal
                .as_ref()
                .is_none_or(|(k, n)| match k.as_str() {
                    "uid" => r.principal.uid == *n,
                    "gid" => r.principal.gid == *n,
                    _ => r.principal.pid == *n,
                })
            && self.path_prefix.as_ref().is_none_or(|p| {
                r.path
                    .as_ref()
                    .is_some_and(|x| gfmt::is_within(x.as_bytes(), p.as_bytes()))
            })
    }
}
