//! The schedule lease (`sealfs.lease`, docs/FORMAT.md §1.2): which host of
//! a shared-storage volume runs the key schedules, and until when.
//!
//! Owns: the lease's bytes (three text lines) and the rule of who may take
//! it ([`Lease::may_take`]).
//! Must never: perform I/O (the volume layer reads and writes it under
//! the lease's byte-range lock).

use crate::format::host_id::HostId;

/// The first line of a lease.
pub const LEASE_MAGIC: &str = "sealfs-lease v1";

/// One lease: its holder and when it ends (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The host that holds it.
    pub holder: HostId,
    /// When it ends unless renewed.
    pub expires_ms: u64,
}

/// Why lease bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed schedule lease: {0}")]
pub struct LeaseError(&'static str);

impl Lease {
    /// The lease's bytes: `sealfs-lease v1\nholder=NAME\nexpires_ms=N\n`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{LEASE_MAGIC}\nholder={}\nexpires_ms={}\n",
            self.holder, self.expires_ms
        )
        .into_bytes()
    }

    /// Parses what [`Lease::encode`] wrote (nothing else: unknown lines,
    /// a bad host id or a bad number are refused).
    pub fn decode(bytes: &[u8]) -> Result<Lease, LeaseError> {
        if bytes.len() > 256 {
            return Err(LeaseError("too long"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| LeaseError("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(LEASE_MAGIC) {
            return Err(LeaseError("no 'sealfs-lease v1' line"));
        }
        let holder = lines
            .next()
            .and_then(|l| l.strip_prefix("holder="))
            .and_then(|h| HostId::parse(h).ok())
            .ok_or(LeaseError("no valid holder= line"))?;
        let expires_ms = lines
            .next()
            .and_then(|l| l.strip_prefix("expires_ms="))
            .and_then(|n| n.parse().ok())
            .ok_or(LeaseError("no valid expires_ms= line"))?;
        if lines.next().is_some() {
            return Err(LeaseError("trailing lines"));
        }
        Ok(Lease { holder, expires_ms })
    }

    /// Whether `me` may take or renew `current` at `now_ms`: nobody holds
    /// it (absent or unreadable), it is `me`'s, or it has expired.
    pub fn may_take(current: Option<&Lease>, me: &HostId, now_ms: u64) -> bool {
        current.is_none_or(|l| &l.holder == me || l.expires_ms <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostId {
        HostId::parse(s).unwrap()
    }

    #[test]
    fn round_trip() {
        let l = Lease {
            holder: h("node-a"),
            expires_ms: 1_796_000_000_123,
        };
        assert_eq!(Lease::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            &b""[..],
            b"sealfs-lease v2\nholder=a\nexpires_ms=1\n",
            b"sealfs-lease v1\nholder=.a\nexpires_ms=1\n",
            b"sealfs-lease v1\nholder=a\nexpires_ms=x\n",
            b"sealfs-lease v1\nholder=a\nexpires_ms=1\nmore\n",
            b"sealfs-lease v1\nexpires_ms=1\nholder=a\n",
        ] {
            assert!(Lease::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn who_may_take_it() {
        let l = Lease {
            holder: h("a"),
            expires_ms: 1000,
        };
        assert!(Lease::may_take(None, &h("b"), 0));
        assert!(Lease::may_take(Some(&l), &h("a"), 500), "renewal");
        assert!(!Lease::may_take(Some(&l), &h("b"), 999), "held by another");
        assert!(Lease::may_take(Some(&l), &h("b"), 1000), "expired");
    }
}
