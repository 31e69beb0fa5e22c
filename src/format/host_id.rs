//! A host's name in a volume shared by several daemons (`sealfs mount
//! --shared-storage --host-id NAME`, docs/FORMAT.md §1.2): it names the
//! holder of the schedule lease and, in the audit log, the host's stream.
//!
//! Owns: what a host id may be ([`HostId::parse`]: 1 to 32 of
//! `A-Za-z0-9._-`, not starting with `.`, so it is a safe file-name part)
//! and the default made from a machine's hostname ([`HostId::from_hostname`]).
//! Must never: perform I/O (the caller reads the hostname).

use std::fmt;

/// The longest host id.
pub const HOST_ID_MAX: usize = 32;

/// The host id used when the hostname leaves nothing usable.
pub const FALLBACK_HOST_ID: &str = "host";

/// Why a host id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostIdError {
    /// Empty.
    #[error("a host id cannot be empty")]
    Empty,
    /// Longer than [`HOST_ID_MAX`].
    #[error("a host id has at most {HOST_ID_MAX} characters (this one has {0})")]
    TooLong(usize),
    /// Starts with a dot.
    #[error("a host id cannot start with '.'")]
    LeadingDot,
    /// A character outside `A-Za-z0-9._-`.
    #[error("a host id may only hold A-Z, a-z, 0-9, '.', '_' and '-' (found {0:?})")]
    BadChar(char),
}

/// A checked host id (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(String);

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl HostId {
    /// Checks `s`: 1 to 32 of `A-Za-z0-9._-`, not starting with `.`.
    pub fn parse(s: &str) -> Result<HostId, HostIdError> {
        if s.is_empty() {
            return Err(HostIdError::Empty);
        }
        if let Some(c) = s.chars().find(|c| !allowed(*c)) {
            return Err(HostIdError::BadChar(c));
        }
        if s.len() > HOST_ID_MAX {
            return Err(HostIdError::TooLong(s.len()));
        }
        if s.starts_with('.') {
            return Err(HostIdError::LeadingDot);
        }
        Ok(HostId(s.to_string()))
    }

    /// The default host id from a machine's hostname: every character
    /// outside the allowed set becomes `-`, leading dots go, the rest is cut
    /// to 32 characters; [`FALLBACK_HOST_ID`] if nothing is left.
    pub fn from_hostname(hostname: &str) -> HostId {
        let cleaned: String = hostname
            .trim()
            .chars()
            .map(|c| if allowed(c) { c } else { '-' })
            .collect();
        let cleaned = cleaned.trim_start_matches('.');
        let cut: String = cleaned.chars().take(HOST_ID_MAX).collect();
        HostId::parse(&cut).unwrap_or_else(|_| HostId(FALLBACK_HOST_ID.to_string()))
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

impl std::str::FromStr for HostId {
    type Err = HostIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_set() {
        for ok in ["a", "host-1", "web_02.example", "A.b-C_9", &"x".repeat(32)] {
            assert_eq!(HostId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(HostId::parse(""), Err(HostIdError::Empty));
        assert_eq!(HostId::parse(".hidden"), Err(HostIdError::LeadingDot));
        assert_eq!(
            HostId::parse(&"x".repeat(33)),
            Err(HostIdError::TooLong(33))
        );
        for (bad, c) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("é", 'é'),
            ("a\0", '\0'),
            ("..", '.'),
        ] {
            match HostId::parse(bad) {
                Err(HostIdError::BadChar(x)) => assert_eq!(x, c, "{bad:?}"),
                Err(HostIdError::LeadingDot) => assert_eq!(bad, ".."),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn hostnames_are_sanitised() {
        assert_eq!(HostId::from_hostname("node7.lab").as_str(), "node7.lab");
        assert_eq!(HostId::from_hostname("my host\n").as_str(), "my-host");
        assert_eq!(HostId::from_hostname("...x").as_str(), "x");
        assert_eq!(HostId::from_hostname("").as_str(), FALLBACK_HOST_ID);
        assert_eq!(HostId::from_hostname("...").as_str(), FALLBACK_HOST_ID);
        assert_eq!(HostId::from_hostname(&"h".repeat(80)).as_str().len(), 32);
    }
}
