//! The name a daemon goes by on shared storage ([`HostId`]): it names the
//! host's own audit stream (`sealfs.audit/hosts/<HOST>/`, docs/FORMAT.md
//! §12.4) and its lease.
//!
//! Owns: what a host id may be (`[A-Za-z0-9._-]{1,32}`, not starting with
//! `.`: a safe single path component on every filesystem) and the default
//! taken from the machine's hostname.
//! Must never: perform I/O beyond reading the hostname in [`HostId::from_hostname`].

use std::fmt;

/// Longest host id.
pub const MAX_HOST_ID: usize = 32;

/// A host id that is a safe path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(String);

/// Why a host id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host id {0:?}: use 1 to 32 of the characters A-Z a-z 0-9 . _ - (not starting with '.')")]
pub struct InvalidHostId(pub String);

impl HostId {
    /// Checks `s` and makes it a host id.
    pub fn parse(s: &str) -> Result<HostId, InvalidHostId> {
        let ok = (1..=MAX_HOST_ID).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(HostId(s.to_string()))
        } else {
            Err(InvalidHostId(s.chars().take(64).collect()))
        }
    }

    /// The machine's hostname made valid (other characters become `-`,
    /// cut to 32), or `host` when there is none.
    pub fn from_hostname() -> HostId {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Self::sanitize(raw.trim())
    }

    /// `raw` with every character outside the allowed set replaced by `-`
    /// and cut to [`MAX_HOST_ID`]; `host` if nothing is left.
    pub fn sanitize(raw: &str) -> HostId {
        let mut s: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_HOST_ID)
            .collect();
        while s.starts_with('.') {
            s.remove(0);
        }
        HostId::parse(&s).unwrap_or_else(|_| HostId("host".into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_path_components() {
        for good in ["a", "host-1", "node_7.example", &"x".repeat(32)] {
            assert_eq!(HostId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(33),
            "a\0",
        ] {
            assert!(HostId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames_are_made_valid() {
        assert_eq!(HostId::sanitize("web 01/eu").as_str(), "web-01-eu");
        assert_eq!(HostId::sanitize("..x").as_str(), "x");
        assert_eq!(HostId::sanitize("").as_str(), "host");
        assert_eq!(HostId::sanitize(&"y".repeat(40)).as_str().len(), 32);
    }
}
