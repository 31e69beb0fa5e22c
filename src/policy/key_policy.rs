//! Key policies (issue 22): who may administer a key and who may use it,
//! as a versioned JSON document per key (docs/CONTROL.md §16.3), parsed
//! once into a compiled form the FUSE path decides from without
//! allocating or touching JSON.
//!
//! ```json
//! {"version": 1,
//!  "statements": [
//!    {"principals": ["uid:1000"], "actions": ["*"]},
//!    {"principals": ["uid:1001", "gid:50"], "actions": ["admin:rotate", "admin:disable"]},
//!    {"principals": ["uid:1002"], "actions": ["use:read", "use:write"],
//!     "path_prefix": "/finance", "not_before": 1796000000, "not_after": 1800000000}]}
//! ```
//!
//! A statement allows its actions to its principals, within its
//! conditions (a path prefix, the encryption-context condition; a time
//! window). Nothing is allowed that no statement allows. A key without a
//! policy keeps the behaviour from before policies: the mount owner and
//! root administer it, and its use is decided by grants alone.
//!
//! Owns: the document's schema, its normal form (user and group names
//! resolved to ids, times as seconds since the epoch), the lockout safety
//! check, and the decision.
//! Must never: do I/O (names are resolved by a function the caller hands
//! in), or allocate when deciding for a policy without path conditions.

use serde::{Deserialize, Serialize};

/// Version of the policy document.
pub const POLICY_VERSION: u32 = 1;
/// Most statements in one policy.
pub const MAX_STATEMENTS: usize = 64;
/// Most principals in one statement.
pub const MAX_PRINCIPALS: usize = 64;

/// The actions, by name (`admin:*`, `use:*` and `*` name groups of them).
pub const ACTIONS: [(&str, u32); 12] = [
    ("admin:rotate", 1 << 0),
    ("admin:disable", 1 << 1),
    ("admin:enable", 1 << 2),
    ("admin:schedule-deletion", 1 << 3),
    ("admin:grant", 1 << 4),
    ("admin:policy", 1 << 5),
    ("admin:rewrap", 1 << 6),
    ("admin:assign", 1 << 7),
    ("admin:alias", 1 << 8),
    ("admin:trim", 1 << 9),
    ("use:read", 1 << 16),
    ("use:write", 1 << 17),
];
/// Every `admin:` action.
pub const ADMIN_ALL: u32 = 0xffff;
/// Every `use:` action.
pub const USE_ALL: u32 = 0xffff_0000;

/// The bit of the action named `name` (a group for `admin:*`, `use:*`, `*`).
pub fn action_bits(name: &str) -> Option<u32> {
    match name {
        "*" => Some(ADMIN_ALL | USE_ALL),
        "admin:*" => Some(ADMIN_ALL),
        "use:*" => Some(USE_ALL),
        n => ACTIONS.iter().find(|(a, _)| *a == n).map(|(_, b)| *b),
    }
}

/// The bit of one named action (not a group); panics on an unknown name,
/// which is a bug of the caller.
pub fn action(name: &str) -> u32 {
    ACTIONS
        .iter()
        .find(|(a, _)| *a == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("unknown key policy action {name}"))
}

/// Errors of a policy document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyPolicyError {
    /// Not JSON of the expected shape.
    #[error("key policy: {0}")]
    Invalid(String),
    /// The policy would leave nobody able to change it.
    #[error("key policy refused: no principal would keep admin:policy without a time condition (lockout safety check)")]
    Lockout,
}

/// A principal of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPrincipal {
    /// A user id.
    Uid(u32),
    /// A group id (the caller's primary or a supplementary group).
    Gid(u32),
}

impl KeyPrincipal {
    fn wire(self) -> String {
        match self {
            KeyPrincipal::Uid(u) => format!("uid:{u}"),
            KeyPrincipal::Gid(g) => format!("gid:{g}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    principals: Vec<KeyPrincipal>,
    actions: u32,
    path_prefix: Option<Vec<u8>>,
    not_before: Option<u64>,
    not_after: Option<u64>,
}

/// A parsed, normalized key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
    any_path_condition: bool,
}

/// Who asks, for [`KeyPolicy::allows`]: the user, the primary group, and
/// the supplementary groups, read (from `/proc`) only if a statement
/// names a group the primary one is not.
pub struct Asker<'a> {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// The supplementary groups, asked at most once per decision.
    pub groups: &'a mut dyn FnMut() -> Vec<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: u32,
    statements: Vec<DocStatement>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocStatement {
    principals: Vec<String>,
    actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<TimeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<TimeSpec>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TimeSpec {
    Secs(u64),
    Text(String),
}

fn canonical_prefix(p: &str) -> Result<Vec<u8>, KeyPolicyError> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "." || c == "..") {
        return Err(KeyPolicyError::Invalid(format!(
            "path_prefix {p:?} must be an absolute canonical path"
        )));
    }
    let t = p.trim_end_matches('/');
    Ok(if t.is_empty() {
        b"/".to_vec()
    } else {
        t.as_bytes().to_vec()
    })
}

impl KeyPolicy {
    /// Parses a document. `principal` turns `uid:N`, `gid:N`, `user:NAME`,
    /// `group:NAME` (or a bare user name) into an id; `time` turns a time
    /// text (RFC 3339, date, or duration from now) into epoch seconds.
    pub fn parse(
        text: &str,
        principal: &dyn Fn(&str) -> Result<KeyPrincipal, String>,
        time: &dyn Fn(&str) -> Result<u64, String>,
    ) -> Result<KeyPolicy, KeyPolicyError> {
        let bad = |m: String| KeyPolicyError::Invalid(m);
        let doc: Doc = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if doc.version != POLICY_VERSION {
            return Err(bad(format!(
                "version {} (this sealfs reads version {POLICY_VERSION})",
                doc.version
            )));
        }
        if doc.statements.is_empty() || doc.statements.len() > MAX_STATEMENTS {
            return Err(bad(format!(
                "1 to {MAX_STATEMENTS} statements, not {}",
                doc.statements.len()
            )));
        }
        let mut statements = Vec::new();
        for s in doc.statements {
            if s.principals.is_empty() || s.principals.len() > MAX_PRINCIPALS {
                return Err(bad("a statement needs 1 to 64 principals".into()));
            }
            let principals = s
                .principals
                .iter()
                .map(|p| principal(p).map_err(|e| bad(format!("principal {p:?}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let mut actions = 0u32;
            for a in &s.actions {
                actions |= action_bits(a).ok_or_else(|| bad(format!("unknown action {a:?}")))?;
            }
            if actions == 0 {
                return Err(bad("a statement needs at least one action".into()));
            }
            let when = |t: &Option<TimeSpec>| -> Result<Option<u64>, KeyPolicyError> {
                match t {
                    None => Ok(None),
                    Some(TimeSpec::Secs(s)) => Ok(Some(*s)),
                    Some(TimeSpec::Text(x)) => time(x).map(Some).map_err(bad),
                }
            };
            let not_before = when(&s.not_before)?;
            let not_after = when(&s.not_after)?;
            if let (Some(a), Some(b)) = (not_before, not_after) {
                if a >= b {
                    return Err(bad("not_before must be before not_after".into()));
                }
            }
            statements.push(Statement {
                principals,
                actions,
                path_prefix: s.path_prefix.as_deref().map(canonical_prefix).transpose()?,
                not_before,
                not_after,
            });
        }
        let any_path_condition = statements.iter().any(|s| s.path_prefix.is_some());
        Ok(KeyPolicy {
            statements,
            any_path_condition,
        })
    }

    /// Parses the normal form stored in the keyring (`uid:N`, `gid:N`,
    /// epoch seconds). A stored policy that does not parse allows nothing.
    pub fn parse_stored(text: &str) -> KeyPolicy {
        let principal = |p: &str| match p.split_once(':') {
            Some(("uid", n)) => n.parse().map(KeyPrincipal::Uid).map_err(|e| e.to_string()),
            Some(("gid", n)) => n.parse().map(KeyPrincipal::Gid).map_err(|e| e.to_string()),
            _ => Err("not in normal form".to_string()),
        };
        let time = |_: &str| Err("not in normal form".to_string());
        KeyPolicy::parse(text, &principal, &time).unwrap_or_else(|e| {
            tracing::warn!("stored key policy unreadable ({e}); it allows nothing");
            KeyPolicy {
                statements: Vec::new(),
                any_path_condition: false,
            }
        })
    }

    /// The policy every key had before policies, written out: `uid:owner`
    /// and `uid:0` may do everything.
    pub fn owner_default(owner: u32) -> KeyPolicy {
        let mut principals = vec![KeyPrincipal::Uid(owner)];
        if owner != 0 {
            principals.push(KeyPrincipal::Uid(0));
        }
        KeyPolicy {
            statements: vec![Statement {
                principals,
                actions: ADMIN_ALL | USE_ALL,
                path_prefix: None,
                not_before: None,
                not_after: None,
            }],
            any_path_condition: false,
        }
    }

    /// The lockout safety check: some principal keeps `admin:policy` with
    /// no time condition (a path condition does not apply to admin actions).
    pub fn check_lockout(&self) -> Result<(), KeyPolicyError> {
        let ok = self.statements.iter().any(|s| {
            s.actions & action("admin:policy") != 0
                && s.not_before.is_none()
                && s.not_after.is_none()
        });
        if ok {
            Ok(())
        } else {
            Err(KeyPolicyError::Lockout)
        }
    }

    /// The normal form (ids, epoch seconds), as stored in the keyring and
    /// printed by `key policy get`.
    pub fn to_json(&self) -> String {
        let doc = Doc {
            version: POLICY_VERSION,
            statements: self
                .statements
                .iter()
                .map(|s| DocStatement {
                    principals: s.principals.iter().map(|p| p.wire()).collect(),
                    actions: names_of(s.actions),
                    path_prefix: s
                        .path_prefix
                        .as_ref()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                    not_before: s.not_before.map(TimeSpec::Secs),
                    not_after: s.not_after.map(TimeSpec::Secs),
                })
                .collect(),
        };
        serde_json::to_string(&doc).expect("a policy serializes")
    }

    /// Whether `who` may do `action` at `now`, on the entry whose
    /// plaintext path `path` gives (asked only when a statement has a
    /// path condition; admin actions ignore path conditions). A `gid:`
    /// principal matches the primary group or, read only then, a
    /// supplementary one.
    pub fn allows(
        &self,
        who: Asker<'_>,
        action: u32,
        now: u64,
        path: &mut dyn FnMut() -> Vec<u8>,
    ) -> bool {
        let mut cached: Option<Vec<u8>> = None;
        let mut supplementary: Option<Vec<u32>> = None;
        let Asker { uid, gid, groups } = who;
        self.statements.iter().any(|s| {
            if s.actions & action == 0
                || s.not_before.is_some_and(|t| now < t)
                || s.not_after.is_some_and(|t| now >= t)
                || !s.principals.iter().any(|p| match p {
                    KeyPrincipal::Uid(u) => *u == uid,
                    KeyPrincipal::Gid(g) => {
                        *g == gid || supplementary.get_or_insert_with(&mut *groups).contains(g)
                    }
                })
            {
                return false;
            }
            match (&s.path_prefix, action & USE_ALL != 0) {
                (Some(prefix), true) => {
                    let p = cached.get_or_insert_with(&mut *path);
                    prefix == b"/"
                        || (p.starts_with(prefix)
                            && (p.len() == prefix.len() || p[prefix.len()] == b'/'))
                }
                _ => true,
            }
        })
    }

    /// Whether a statement has a path condition.
    pub fn has_path_conditions(&self) -> bool {
        self.any_path_condition
    }
}

/// The names of the actions in `bits`, groups folded (`*`, `admin:*`, `use:*`).
fn names_of(bits: u32) -> Vec<String> {
    let all = ACTIONS.iter().fold(0, |a, (_, b)| a | b);
    let admin = all & ADMIN_ALL;
    let uses = all & USE_ALL;
    if bits & all == all {
        return vec!["*".into()];
    }
    let mut out = Vec::new();
    let mut rest = bits;
    if bits & admin == admin {
        out.push("admin:*".to_string());
        rest &= !ADMIN_ALL;
    }
    if bits & uses == uses {
        out.push("use:*".to_string());
        rest &= !USE_ALL;
    }
    for (n, b) in ACTIONS {
        if rest & b != 0 {
            out.push(n.to_string());
        }
    }
    out
}

/// SHA-256 of a policy's normal form (hex), for the audit record of a change.
pub fn policy_hash(json: &str) -> String {
    use sha2::Digest;
    crate::format::config::hex(&sha2::Sha256::digest(json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether uid `u` with primary group `g` (no supplementary ones)
    /// may do `a` at `now` on `path`.
    fn allows_to(p: &KeyPolicy, u: u32, g: u32, a: u32, now: u64, path: &[u8]) -> bool {
        p.allows(
            Asker {
                uid: u,
                gid: g,
                groups: &mut Vec::new,
            },
            a,
            now,
            &mut || path.to_vec(),
        )
    }

    fn parse(t: &str) -> Result<KeyPolicy, KeyPolicyError> {
        KeyPolicy::parse(
            t,
            &|p| match p.split_once(':') {
                Some(("uid", n)) => n.parse().map(KeyPrincipal::Uid).map_err(|e| e.to_string()),
                Some(("gid", n)) => n.parse().map(KeyPrincipal::Gid).map_err(|e| e.to_string()),
                _ => Err("unknown".into()),
            },
            &|_| Ok(1000),
        )
    }

    #[test]
    fn decides_by_principal_action_path_and_time() {
        let p = parse(
            r#"{"version":1,"statements":[
              {"principals":["uid:1"],"actions":["*"]},
              {"principals":["uid:2","gid:7"],"actions":["admin:rotate","admin:disable"]},
              {"principals":["uid:3"],"actions":["use:read"],"path_prefix":"/fin/","not_before":100,"not_after":"x"}]}"#,
        )
        .unwrap();
        assert!(allows_to(&p, 1, 1, action("admin:policy"), 500, b"/fin/a"));
        assert!(allows_to(&p, 2, 9, action("admin:rotate"), 500, b"/fin/a"));
        assert!(allows_to(&p, 9, 7, action("admin:disable"), 500, b"/fin/a"));
        assert!(!allows_to(&p, 2, 9, action("use:read"), 500, b"/fin/a"));
        assert!(!allows_to(&p, 2, 9, action("admin:policy"), 500, b"/fin/a"));
        assert!(allows_to(&p, 3, 3, action("use:read"), 500, b"/fin/a"));
        assert!(!allows_to(&p, 3, 3, action("use:read"), 50, b"/fin/a"));
        assert!(!allows_to(&p, 3, 3, action("use:read"), 1000, b"/fin/a"));
        assert!(!allows_to(&p, 3, 3, action("use:write"), 500, b"/fin/a"));
        assert!(!allows_to(&p, 3, 3, action("use:read"), 500, b"/finance"));
        assert!(allows_to(&p, 3, 3, action("use:read"), 500, b"/fin"));
        // A gid principal matches a supplementary group too, read only
        // when the primary group does not match.
        let mut reads = 0;
        let mut sup = || {
            reads += 1;
            vec![5, 7]
        };
        let who = |groups: &mut dyn FnMut() -> Vec<u32>| {
            p.allows(
                Asker {
                    uid: 9,
                    gid: 9,
                    groups,
                },
                action("admin:rotate"),
                500,
                &mut Vec::new,
            )
        };
        assert!(who(&mut sup));
        assert!(!who(&mut || vec![5, 8]));
        assert!(allows_to(&p, 9, 7, action("admin:rotate"), 500, b"/"));
        assert_eq!(reads, 1);
        let mut never = || -> Vec<u32> { panic!("groups read for a uid match") };
        assert!(p.allows(
            Asker {
                uid: 1,
                gid: 1,
                groups: &mut never
            },
            action("admin:policy"),
            500,
            &mut Vec::new
        ));
        p.check_lockout().unwrap();
        // The normal form parses back to the same policy.
        assert_eq!(parse(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn refuses_bad_documents_and_lockouts() {
        for bad in [
            "",
            "[]",
            r#"{"version":2,"statements":[{"principals":["uid:1"],"actions":["*"]}]}"#,
            r#"{"version":1,"statements":[]}"#,
            r#"{"version":1,"statements":[{"principals":[],"actions":["*"]}]}"#,
            r#"{"version":1,"statements":[{"principals":["uid:1"],"actions":["admin:launch"]}]}"#,
            r#"{"version":1,"statements":[{"principals":["bob"],"actions":["*"]}]}"#,
            r#"{"version":1,"statements":[{"principals":["uid:1"],"actions":["*"],"path_prefix":"fin"}]}"#,
            r#"{"version":1,"statements":[{"principals":["uid:1"],"actions":["*"],"extra":1}]}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(KeyPolicyError::Invalid(_))),
                "{bad}"
            );
        }
        let p = parse(r#"{"version":1,"statements":[{"principals":["uid:1"],"actions":["use:*","admin:rotate"]}]}"#).unwrap();
        assert_eq!(p.check_lockout(), Err(KeyPolicyError::Lockout));
        let p = parse(r#"{"version":1,"statements":[{"principals":["uid:1"],"actions":["admin:policy"],"not_after":5000}]}"#).unwrap();
        assert_eq!(p.check_lockout(), Err(KeyPolicyError::Lockout));
        KeyPolicy::owner_default(1000).check_lockout().unwrap();
    }
}
