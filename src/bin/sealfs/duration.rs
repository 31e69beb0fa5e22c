//! Durations on the command line: always with a unit (`90d`, `12h`,
//! `30min`, `2w`, `1day 12h`: humantime's grammar), never a bare number
//! (`90` once meant 90 seconds to `rotation-period`), and sent to the
//! daemon in the protocol's `N{d,h,m,s}` form.
//!
//! Owns: parsing, the floor of a rotation period, the canonical form.
//! Must never: accept a unitless or zero duration.

use std::time::Duration;

/// The shortest rotation period accepted without `--allow-short`: a new
/// master key version more often than daily only grows the keyring.
pub(crate) const MIN_ROTATION: Duration =
    Duration::from_secs(sealfs::kms::MIN_ROTATION_PERIOD_SECS);

/// Parses `s` (a number with a unit); refuses a bare number with a hint.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "'{t}' has no unit: write {t}d (days), {t}h (hours), {t}min or {t}s"
        ));
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("'{t}' is not a duration like 90d, 12h, 30min or 2w ({e})"))?;
    if d.as_secs() == 0 {
        return Err(format!("'{t}' is shorter than a second"));
    }
    Ok(d)
}

/// `d` in the protocol's form (whole seconds, the largest exact unit).
pub(crate) fn wire(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A rotation period: a duration of at least [`MIN_ROTATION`] unless
/// `allow_short`.
pub(crate) fn rotation_period(d: Duration, allow_short: bool) -> Result<Duration, String> {
    if d < MIN_ROTATION && !allow_short {
        return Err(format!(
            "a rotation period of {} is shorter than a day: every rotation makes a new master \
             key version that stays until rewrap and trim; use e.g. 90d, or pass \
             --allow-short to set it anyway",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_required() {
        assert!(parse("90").unwrap_err().contains("no unit"));
        assert_eq!(parse("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse("1day 12h").unwrap(), Duration::from_secs(36 * 3_600));
        assert!(parse("0s").is_err());
        assert!(parse("soon").is_err());
    }

    #[test]
    fn rotation_floor_and_wire_form() {
        let p = |s: &str, short| rotation_period(parse(s).unwrap(), short);
        assert!(p("1s", false).is_err());
        assert!(p("23h", false).is_err());
        assert!(p("1s", true).is_ok());
        assert_eq!(wire(p("2w", false).unwrap()), "14d");
        assert_eq!(wire(parse("36h").unwrap()), "36h");
        assert_eq!(wire(parse("90min").unwrap()), "90m");
        assert_eq!(wire(parse("61s").unwrap()), "61s");
    }
}
