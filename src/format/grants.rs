//! Grants: what they allow, how a request is decided against them, and the
//! sealed grant store file (`sealfs.grants`). docs/FORMAT.md §10.
//!
//! Owns: the grant record, operation sets, canonical path prefixes, the
//! access decision (a pure function of grants, principal, path, operation
//! and time), and sealing/opening the store under a key derived from a
//! master key version.
//! Must never: perform I/O, or keep a grant token (only its SHA-256).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{random_nonce, SecretKey, NONCE_LEN, TAG_LEN};

/// First bytes of the store file.
pub const STORE_MAGIC: &[u8; 8] = b"SEALGRN1";
const STORE_LABEL: &[u8] = b"sealfs grant store v1";
/// magic, key version, generation, nonce.
/// Bytes of the store header before the sealed grants (§13).
pub const STORE_HEADER: usize = 8 + 4 + 8 + NONCE_LEN;

/// Errors of grant handling. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A malformed argument (grantee, operation, prefix, time).
    #[error("{0}")]
    Invalid(String),
    /// The store file is damaged or sealed under another key.
    #[error("grant store is damaged or not this volume's ({0})")]
    Store(&'static str),
}

/// An operation a grant may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOp {
    /// Open for reading (unwrap a data key to decrypt), read symlinks.
    Read,
    /// Open for writing, truncate, change times and modes.
    Write,
    /// List directory contents (decrypt names).
    List,
    /// Create files, directories, symlinks (generate data keys).
    Create,
    /// Remove files and directories.
    Delete,
    /// Rename within the prefix (re-wrap a header to a new context).
    Rename,
}

impl GrantOp {
    const ALL: [GrantOp; 6] = [
        GrantOp::Read,
        GrantOp::Write,
        GrantOp::List,
        GrantOp::Create,
        GrantOp::Delete,
        GrantOp::Rename,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The operation's name in requests and listings.
    pub fn name(self) -> &'static str {
        match self {
            GrantOp::Read => "read",
            GrantOp::Write => "write",
            GrantOp::List => "list",
            GrantOp::Create => "create",
            GrantOp::Delete => "delete",
            GrantOp::Rename => "rename",
        }
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpSet(u8);

impl OpSet {
    /// Parses names ("read", "write", …, or "all").
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<OpSet, GrantError> {
        let mut s = 0u8;
        for n in names {
            let n = n.as_ref().trim();
            if n == "all" {
                s |= GrantOp::ALL.iter().map(|o| o.bit()).fold(0, |a, b| a | b);
                continue;
            }
            let op = GrantOp::ALL
                .iter()
                .find(|o| o.name() == n)
                .ok_or_else(|| {
                    GrantError::Invalid(format!(
                        "unknown operation '{n}' (known: read, write, list, create, delete, rename, all)"
                    ))
                })?;
            s |= op.bit();
        }
        if s == 0 {
            return Err(GrantError::Invalid(
                "a grant needs at least one operation".into(),
            ));
        }
        Ok(OpSet(s))
    }

    /// Whether `op` is in the set.
    pub fn contains(self, op: GrantOp) -> bool {
        self.0 & op.bit() != 0
    }

    /// The names in the set.
    pub fn names(self) -> Vec<&'static str> {
        GrantOp::ALL
            .iter()
            .filter(|o| self.contains(**o))
            .map(|o| o.name())
            .collect()
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grantee {
    /// One user.
    Uid(u32),
    /// Members of a group (primary or supplementary).
    Gid(u32),
}

impl Grantee {
    /// Parses `uid:N` or `gid:N`.
    pub fn parse(s: &str) -> Result<Grantee, GrantError> {
        let bad = || GrantError::Invalid(format!("grantee '{s}' must be uid:N or gid:N"));
        let (kind, n) = s.split_once(':').ok_or_else(bad)?;
        let n: u32 = n.parse().map_err(|_| bad())?;
        match kind {
            "uid" => Ok(Grantee::Uid(n)),
            "gid" => Ok(Grantee::Gid(n)),
            _ => Err(bad()),
        }
    }

    /// `uid:N` / `gid:N`.
    pub fn display(self) -> String {
        match self {
            Grantee::Uid(n) => format!("uid:{n}"),
            Grantee::Gid(n) => format!("gid:{n}"),
        }
    }

    /// Whether a principal with `uid` and groups `gids` is this grantee.
    pub fn matches(self, uid: u32, gids: &[u32]) -> bool {
        match self {
            Grantee::Uid(u) => u == uid,
            Grantee::Gid(g) => gids.contains(&g),
        }
    }
}

/// One live grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Grant id (`g-` and 16 hex digits), public.
    pub id: String,
    /// Optional label.
    #[serde(default)]
    pub name: Option<String>,
    /// Who.
    pub grantee: Grantee,
    /// What.
    pub ops: OpSet,
    /// Where: a canonical absolute plaintext path (`/` for everything).
    pub path_prefix: String,
    /// Creation, seconds since the epoch.
    pub created: u64,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub expires: Option<u64>,
    /// SHA-256 of the grant token, hex.
    pub token_sha256: String,
    /// Uid that created it.
    pub created_by: u32,
    /// The named key whose entries it opens (issue 22), by id; `None`:
    /// the default key (every grant made before grants named keys, and a
    /// grant on the default key, which is stored so the store stays
    /// readable as before). Present only in volumes with the `key-grants`
    /// feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u32>,
}

impl Grant {
    /// Whether the grant opens entries of key `key` (`default`: the
    /// volume's default key).
    pub fn names_key(&self, key: u32, default: u32) -> bool {
        self.key.unwrap_or(default) == key
    }
}

/// SHA-256 of a token, hex (what the store keeps).
pub fn token_digest(token: &str) -> String {
    crate::format::config::hex(&Sha256::digest(token.as_bytes()))
}

/// Checks that `p` is a canonical absolute path: starts with `/`, no empty,
/// `.` or `..` components, no trailing `/` (except `/` itself), no NUL.
pub fn check_prefix(p: &str) -> Result<(), GrantError> {
    let bad = |why: &str| {
        GrantError::Invalid(format!(
            "path prefix '{p}' {why}; give a canonical path inside the mount, like /projects/x"
        ))
    };
    if !p.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    if p.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if p == "/" {
        return Ok(());
    }
    for c in p[1..].split('/') {
        match c {
            "" => return Err(bad("has an empty component or a trailing /")),
            "." | ".." => return Err(bad("has . or .. components")),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` is `prefix` or below it (canonical byte paths).
pub fn is_within(path: &[u8], prefix: &[u8]) -> bool {
    prefix == b"/"
        || path == prefix
        || (path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/')
}

/// What a request wants to do at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Resolve a name / read attributes: allowed inside a grant's prefix
    /// (any operation) and on the directories leading to it.
    Lookup,
    /// One grant operation.
    Op(GrantOp),
}

/// The decision for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by this grant.
    Granted(String),
    /// No live grant allows it.
    Denied,
}

/// The key of the entry a request uses, for [`decide`]: `(key, default)`,
/// the entry's key id and the volume's default key id.
pub type EntryKey = (u32, u32);

/// Decides `access` at `path` for a principal from the live `grants` at
/// `now`; with `key`, only grants that name the entry's key count.
pub fn decide(
    grants: &[Grant],
    (uid, gids): (u32, &[u32]),
    path: &[u8],
    access: Access,
    now: u64,
    key: Option<EntryKey>,
) -> Decision {
    for g in grants {
        if g.expires.is_some_and(|e| now >= e)
            || !g.grantee.matches(uid, gids)
            || key.is_some_and(|(k, default)| !g.names_key(k, default))
        {
            continue;
        }
        let prefix = g.path_prefix.as_bytes();
        let ok = match access {
            Access::Lookup => is_within(path, prefix) || is_within(prefix, path),
            Access::Op(op) => g.ops.contains(op) && is_within(path, prefix),
        };
        if ok {
            return Decision::Granted(g.id.clone());
        }
    }
    Decision::Denied
}

fn store_key(master: &SecretKey, volume_id: &[u8; 16]) -> crate::crypto::SealingKey {
    master.derive(volume_id, STORE_LABEL).cipher()
}

fn store_aad(header: &[u8], volume_id: &[u8; 16]) -> Vec<u8> {
    let mut aad = header[..20].to_vec();
    aad.extend_from_slice(volume_id);
    aad
}

/// Seals the store: the grants under master key `key_version`.
pub fn seal_store(
    grants: &[Grant],
    generation: u64,
    key_version: u32,
    master: &SecretKey,
    volume_id: &[u8; 16],
) -> Result<Vec<u8>, crate::crypto::CryptoError> {
    let nonce = random_nonce()?;
    let mut out = Vec::with_capacity(STORE_HEADER + 256 * grants.len() + TAG_LEN);
    out.extend_from_slice(STORE_MAGIC);
    out.extend_from_slice(&key_version.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&nonce);
    let mut body = serde_json::to_vec(grants).expect("grants always serialize");
    let tag =
        store_key(master, volume_id).seal_in_place(&nonce, &store_aad(&out, volume_id), &mut body);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The store's key version and generation, before opening it.
pub fn store_header(bytes: &[u8]) -> Result<(u32, u64), GrantError> {
    if bytes.len() < STORE_HEADER + TAG_LEN || &bytes[..8] != STORE_MAGIC {
        return Err(GrantError::Store("bad magic or truncated"));
    }
    Ok((
        u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
        u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")),
    ))
}

/// Opens a sealed store with the master key of the version it names.
pub fn open_store(
    bytes: &[u8],
    master: &SecretKey,
    volume_id: &[u8; 16],
) -> Result<Vec<Grant>, GrantError> {
    store_header(bytes)?;
    let nonce: [u8; NONCE_LEN] = bytes[20..STORE_HEADER].try_into().expect("nonce");
    let tag_at = bytes.len() - TAG_LEN;
    let tag: [u8; TAG_LEN] = bytes[tag_at..].try_into().expect("tag");
    let mut body = bytes[STORE_HEADER..tag_at].to_vec();
    store_key(master, volume_id)
        .open_in_place(&nonce, &store_aad(bytes, volume_id), &mut body, &tag)
        .map_err(|_| GrantError::Store("does not authenticate"))?;
    serde_json::from_slice(&body).map_err(|_| GrantError::Store("body does not parse"))
}

/// Parses an expiry: an RFC 3339 time with `Z` or an offset
/// (`2026-12-31T00:00Z`, `2026-12-31T09:00:00+02:00`), a date
/// (`2026-12-31`, midnight UTC), or a duration from `now` (`90m`, `12h`,
/// `7d`). Dates are checked by `jiff` (no 2027-02-31).
pub fn parse_expiry(s: &str, now: u64) -> Result<u64, GrantError> {
    let bad = |why: String| {
        GrantError::Invalid(format!(
            "expiry '{s}' {why}: give a time like 2026-12-31T00:00Z or 2026-12-31T09:00+02:00, \
             a date like 2026-12-31, or a duration like 12h or 7d"
        ))
    };
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("has no unit (a bare number once meant seconds)".into()));
    }
    if let Ok(d) = crate::format::config::parse_duration_with_unit(s) {
        return Ok(now.saturating_add(d));
    }
    let t = if s.contains('T') || s.contains('t') {
        s.parse::<jiff::Timestamp>()
            .map_err(|e| bad(format!("is not a valid time ({e})")))?
    } else {
        let d = s
            .parse::<jiff::civil::Date>()
            .map_err(|e| bad(format!("is not a valid date ({e})")))?;
        jiff::tz::Offset::UTC
            .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .map_err(|e| bad(e.to_string()))?
    };
    u64::try_from(t.as_second()).map_err(|_| bad("is before 1970".into()))
}

/// Formats seconds since the epoch as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn format_utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("@{secs}"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: &str, grantee: Grantee, ops: &[&str], prefix: &str, expires: Option<u64>) -> Grant {
        Grant {
            id: id.into(),
            name: None,
            grantee,
            ops: OpSet::parse(ops).unwrap(),
            path_prefix: prefix.into(),
            created: 0,
            expires,
            token_sha256: token_digest("t"),
            created_by: 0,
            key: None,
        }
    }

    #[test]
    fn a_grant_opens_only_entries_of_the_key_it_names() {
        let mut fin = g("fin", Grantee::Uid(5), &["read"], "/", None);
        fin.key = Some(2);
        let old = g("old", Grantee::Uid(6), &["read"], "/", None);
        let grants = vec![fin, old];
        let read = Access::Op(GrantOp::Read);
        let d = |uid, key| decide(&grants, (uid, &[][..]), b"/a", read, 0, key);
        // Key 2 (default 1): the finance grant, not the old one.
        assert_eq!(d(5, Some((2, 1))), Decision::Granted("fin".into()));
        assert_eq!(d(6, Some((2, 1))), Decision::Denied);
        // The default key: the old grant (no key) means it.
        assert_eq!(d(5, Some((1, 1))), Decision::Denied);
        assert_eq!(d(6, Some((1, 1))), Decision::Granted("old".into()));
        // Without a key (lookups, paths only): both.
        assert_eq!(d(5, None), Decision::Granted("fin".into()));
        // A grant without a key is stored as before (no `key` member), so
        // stores without keyed grants keep their exact form.
        let body = serde_json::to_string(&grants[1]).unwrap();
        assert!(!body.contains("\"key\""), "{body}");
        let back: Grant =
            serde_json::from_str(&serde_json::to_string(&grants[0]).unwrap()).unwrap();
        assert_eq!(back.key, Some(2));
    }

    #[test]
    fn prefix_matching_is_by_component() {
        assert!(is_within(b"/a/b", b"/a"));
        assert!(is_within(b"/a", b"/a"));
        assert!(!is_within(b"/ab", b"/a"));
        assert!(is_within(b"/anything", b"/"));
        assert!(!is_within(b"/", b"/a"));
    }

    #[test]
    fn decisions() {
        let grants = vec![
            g("g1", Grantee::Uid(1001), &["read"], "/p/x", None),
            g(
                "g2",
                Grantee::Gid(100),
                &["write", "create"],
                "/shared",
                Some(50),
            ),
        ];
        let d = |uid, gids: &[u32], path: &str, a, now| {
            decide(&grants, (uid, gids), path.as_bytes(), a, now, None)
        };
        let read = Access::Op(GrantOp::Read);
        assert_eq!(
            d(1001, &[5], "/p/x/f", read, 0),
            Decision::Granted("g1".into())
        );
        assert_eq!(d(1001, &[5], "/p/y/f", read, 0), Decision::Denied);
        assert_eq!(
            d(1001, &[5], "/p/x/f", Access::Op(GrantOp::Write), 0),
            Decision::Denied
        );
        assert_eq!(d(1002, &[5], "/p/x/f", read, 0), Decision::Denied);
        // Lookups along the way to the prefix, not beside it.
        assert_eq!(
            d(1001, &[5], "/p", Access::Lookup, 0),
            Decision::Granted("g1".into())
        );
        assert_eq!(
            d(1001, &[5], "/", Access::Lookup, 0),
            Decision::Granted("g1".into())
        );
        assert_eq!(d(1001, &[5], "/p/y", Access::Lookup, 0), Decision::Denied);
        // Groups, and expiry.
        let w = Access::Op(GrantOp::Write);
        assert_eq!(
            d(7, &[3, 100], "/shared/a", w, 49),
            Decision::Granted("g2".into())
        );
        assert_eq!(d(7, &[3, 100], "/shared/a", w, 50), Decision::Denied);
    }

    #[test]
    fn prefixes_must_be_canonical() {
        for ok in ["/", "/a", "/a/b c/d"] {
            check_prefix(ok).unwrap();
        }
        for bad in ["", "a", "/a/", "/a//b", "/a/../b", "/./a", "/a/.."] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ops_and_grantees_parse() {
        assert_eq!(
            OpSet::parse(&["read", "list"]).unwrap().names(),
            vec!["read", "list"]
        );
        assert_eq!(OpSet::parse(&["all"]).unwrap().names().len(), 6);
        assert!(OpSet::parse(&["fly"]).is_err());
        assert!(OpSet::parse::<&str>(&[]).is_err());
        assert_eq!(Grantee::parse("uid:1001").unwrap(), Grantee::Uid(1001));
        assert_eq!(Grantee::parse("gid:100").unwrap(), Grantee::Gid(100));
        for bad in ["1001", "uid:", "user:1", "uid:-1"] {
            assert!(Grantee::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_round_trip_and_tamper() {
        let k = SecretKey::from_bytes([3; 32]);
        let grants = vec![g("g1", Grantee::Uid(1), &["read"], "/x", Some(9))];
        let mut bytes = seal_store(&grants, 4, 2, &k, &[9; 16]).unwrap();
        assert_eq!(store_header(&bytes).unwrap(), (2, 4));
        assert_eq!(open_store(&bytes, &k, &[9; 16]).unwrap(), grants);
        assert!(open_store(&bytes, &k, &[8; 16]).is_err());
        bytes[14] ^= 1; // the generation is authenticated
        assert!(open_store(&bytes, &k, &[9; 16]).is_err());
        assert!(open_store(&bytes[..10], &k, &[9; 16]).is_err());
    }

    #[test]
    fn expiry_parsing() {
        assert_eq!(parse_expiry("1970-01-02", 0).unwrap(), 86400);
        assert_eq!(parse_expiry("2026-12-31T00:00Z", 0).unwrap(), 1798675200);
        assert_eq!(parse_expiry("2026-12-31T00:00:30Z", 0).unwrap(), 1798675230);
        assert_eq!(parse_expiry("2h", 100).unwrap(), 7300);
        // Offsets are accepted.
        assert_eq!(
            parse_expiry("2026-12-31T02:00+02:00", 0).unwrap(),
            1798675200
        );
        for bad in [
            "2027-02-31",
            "2026-02-29",
            "2026-12-31T00:00:00+02:00:00:00",
            "2026-13-01",
            "tomorrow",
            "2026-12-31T25:00Z",
            "2026-12-31T00:00",
        ] {
            assert!(parse_expiry(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(format_utc(1798675230), "2026-12-31T00:00:30Z");
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    }
}
