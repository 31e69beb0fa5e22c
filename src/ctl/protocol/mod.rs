//! The control protocol, version 1: one JSON object per line each way
//! (docs/CONTROL.md). Pure: parses and builds request and response lines.
//! The daemon and `sealfs ctl` speak it through the same types: [`Request`]
//! (an [`Op`] and its arguments) one way, a [`Response`] envelope carrying
//! one of the [`results`] types (or an error) the other.
//!
//! Lines are written with their keys in alphabetical order (every line is
//! built through a [`serde_json::Value`], whose map is sorted); clients must
//! not depend on that.
//!
//! Owns: the request, response and error-code vocabulary, the envelope, and
//! the line-length cap.
//! Must never: touch the volume or sockets, or decide anything (the
//! handlers and [`crate::kms`] do).

pub mod keys;
pub mod results;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use keys::*;
pub use results::*;

/// Protocol version spoken here.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not an object of the expected shape.
    BadRequest,
    /// A `v` other than 1.
    UnsupportedVersion,
    /// An `op` this daemon does not know.
    UnknownOp,
    /// Line longer than [`MAX_LINE`].
    TooLarge,
    /// The peer may not do this.
    Forbidden,
    /// Something is already running (e.g. a rewrap).
    Busy,
    /// Arguments or state do not allow it.
    Invalid,
    /// The volume is mounted read-only.
    ReadOnly,
    /// The operation failed inside the daemon.
    Internal,
    /// No such grant.
    NotFound,
    /// The audit record could not be written, so the operation was refused.
    AuditFailed,
    /// The KMS behind the volume's keyslot refused (key disabled, token
    /// revoked) or could not be reached; the mount keeps working from memory.
    Kms,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::Invalid => "invalid",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AuditFailed => "audit_failed",
            ErrorCode::Kms => "kms",
        }
    }

    /// Every code, for [`ErrorCode::from_wire`] and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOp,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::Busy,
        ErrorCode::Invalid,
        ErrorCode::ReadOnly,
        ErrorCode::Internal,
        ErrorCode::NotFound,
        ErrorCode::AuditFailed,
        ErrorCode::Kms,
    ];

    /// The code of a wire name, if this side knows it.
    pub fn from_wire(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A request's operation and arguments. Unknown extra fields are ignored,
/// so a newer client's optional arguments do not break an older daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Volume, key versions, schedule, rewrap progress, last census.
    Status,
    /// New primary master key version.
    Rotate,
    /// Start re-wrapping every header under the primary version (background).
    Rewrap,
    /// Count headers per key version (a full scan).
    Census,
    /// Check the mounted volume (check only, like `sealfs fsck`): the report.
    Fsck,
    /// Counters in the Prometheus text format: `{"text": …}`.
    Metrics,
    /// Refuse all file I/O with EACCES until enabled.
    Disable,
    /// Undo disable.
    Enable,
    /// Set or clear the automatic rotation period ("90d", or null/"off").
    SetRotationPeriod {
        /// The period.
        period: Option<String>,
        /// Accept a period shorter than a day.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_short: bool,
    },
    /// Retire every version below `min_version` (minimum decryption version).
    Trim {
        /// Lowest version that still decrypts.
        min_version: u32,
        /// Retire even though headers still use those versions (they become
        /// unreadable until `untrim`).
        #[serde(default)]
        force: bool,
    },
    /// Re-enable a retired version.
    Untrim {
        /// The version.
        version: u32,
    },
    /// Schedule the destruction of a retired version after `wait` ("7d").
    /// Without `confirm: true` it only reports how many files it would orphan.
    ScheduleDeletion {
        /// The version.
        version: u32,
        /// Waiting period (default 7d).
        #[serde(default)]
        wait: Option<String>,
        /// Really do it.
        #[serde(default)]
        confirm: bool,
    },
    /// Cancel a scheduled destruction.
    CancelDeletion {
        /// The version.
        version: u32,
    },
    /// Give another local user or group access to a path prefix.
    GrantCreate {
        /// `uid:N` or `gid:N`.
        grantee: String,
        /// Operations: read, write, list, create, delete, rename, all.
        ops: Vec<String>,
        /// Canonical plaintext path prefix (`/projects/x`).
        path_prefix: String,
        /// Expiry: RFC 3339 UTC time, date, or duration from now.
        #[serde(default)]
        expires: Option<String>,
        /// A label.
        #[serde(default)]
        name: Option<String>,
    },
    /// The live grants, optionally filtered.
    GrantList {
        /// Only this grantee (`uid:N` / `gid:N`).
        #[serde(default)]
        grantee: Option<String>,
        /// Only grants whose prefix contains or lies under this path.
        #[serde(default)]
        path_prefix: Option<String>,
    },
    /// End a grant with its token (the grantee may do this).
    GrantRetire {
        /// The grant token returned at creation.
        token: GrantToken,
    },
    /// End a grant by id (owner).
    GrantRevoke {
        /// The grant id.
        grant_id: String,
    },
    /// Stream audit records as JSON lines, then a summary response.
    AuditExport {
        /// Only records at or after this time (RFC 3339 UTC, date, or a duration ago).
        #[serde(default)]
        since: Option<String>,
        /// Only records before this time.
        #[serde(default)]
        until: Option<String>,
        /// Only this principal: `uid:N`, `gid:N` or `pid:N`.
        #[serde(default)]
        principal: Option<String>,
        /// Only records whose path lies under this prefix.
        #[serde(default)]
        path_prefix: Option<String>,
        /// Only this operation (JSON field `operation`).
        #[serde(default)]
        operation: Option<String>,
    },
    /// Verify the audit chain now.
    AuditVerify,
    /// Create a named key (generated, or imported with `material`).
    KeyCreate {
        /// Its alias.
        alias: String,
        /// Free text.
        #[serde(default)]
        description: String,
        /// Automatic rotation period ("90d").
        #[serde(default)]
        rotation_period: Option<String>,
        /// Imported key material (BYOK), 64 hex digits.
        #[serde(default)]
        material: Option<KeyMaterial>,
        /// Imported keys: when the key is disabled automatically (RFC 3339
        /// UTC time, date, or duration from now).
        #[serde(default)]
        expires: Option<String>,
    },
    /// Every key and the subtree assignments.
    KeyList,
    /// Add an alias to the request's `key`.
    KeyAliasAdd {
        /// The alias.
        alias: String,
    },
    /// Remove an alias of the request's `key`.
    KeyAliasRemove {
        /// The alias.
        alias: String,
    },
    /// Make the request's `key` the key of new entries at and below `path`.
    KeyAssign {
        /// Plaintext directory path (`/finance`).
        path: String,
    },
    /// Remove the assignment of `path`.
    KeyUnassign {
        /// Plaintext directory path.
        path: String,
    },
    /// Start re-wrapping every entry at or below `path` under the key that
    /// applies there (background; progress in `status.rewrap`).
    RewrapPath {
        /// Plaintext directory path.
        path: String,
    },
    /// The policy of the request's `key` (normal form), or null: none set.
    KeyPolicyGet,
    /// Set the policy of the request's `key` (a JSON document, §16.3), or
    /// clear it with null (back to: the mount owner and root administer,
    /// grants decide use).
    KeyPolicySet {
        /// The policy document.
        policy: Option<String>,
    },
    /// Prune whole audit segments whose records are all older than
    /// `before`, and/or the oldest ones while the log is larger than
    /// `max_bytes` (docs/FORMAT.md §12.3). The segment being written and
    /// everything from a break on are kept.
    AuditPrune {
        /// RFC 3339 UTC time, date, or a duration ago (`400d`).
        #[serde(default)]
        before: Option<String>,
        /// Keep at most this many bytes of segments.
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// Set the audit log's retention rule (stored in the keyring, applied
    /// by the mount); neither limit turns it off.
    AuditRetention {
        /// Prune records older than this (`400d`).
        #[serde(default)]
        max_age: Option<String>,
        /// Prune the oldest segments while the log is larger.
        #[serde(default)]
        max_bytes: Option<u64>,
        /// Accept an age below a day or a size below 16 MiB.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_short: bool,
    },
}

/// A grant token: a bearer credential, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GrantToken(pub String);

impl std::fmt::Debug for GrantToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantToken(<redacted>)")
    }
}

/// A request: `{"v": 1, "id": …, "op": …, "key": …, arguments…}` on the
/// wire. `key` (an alias or an id) names the key a key operation
/// addresses; absent, the default key (docs/CONTROL.md §16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed back in the response.
    pub id: Value,
    /// What to do.
    pub op: Op,
    /// The key it addresses (None: the default key, or the whole volume
    /// for `disable`/`enable`).
    pub key: Option<String>,
}

impl Request {
    /// A request for `op` with id 1 (what `sealfs ctl` sends).
    pub fn new(op: Op) -> Self {
        Request {
            id: Value::from(1),
            op,
            key: None,
        }
    }

    /// This request, addressed to key `key` (an alias or an id).
    pub fn with_key(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }

    /// The request line (without newline).
    pub fn to_line(&self) -> String {
        serde_json::to_value(self)
            .expect("a request always serializes")
            .to_string()
    }
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(&self.op).map_err(serde::ser::Error::custom)?;
        let map = v
            .as_object_mut()
            .ok_or_else(|| serde::ser::Error::custom("an op serializes to an object"))?;
        map.insert("v".into(), Value::from(PROTOCOL_VERSION));
        map.insert("id".into(), self.id.clone());
        if let Some(k) = &self.key {
            map.insert("key".into(), Value::from(k.clone()));
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Request {
    /// Accepts what [`parse_request`] accepts; its error message otherwise.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        request_of_value(v).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A request that could not be parsed, with the id if one was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The id, or null.
    pub id: Value,
    /// Why.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let err = |id: Value, code, message: String| RequestError { id, code, message };
    if line.len() > MAX_LINE {
        return Err(err(
            Value::Null,
            ErrorCode::TooLarge,
            format!("request longer than {MAX_LINE} bytes"),
        ));
    }
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| err(Value::Null, ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    request_of_value(v)
}

/// Steps 3 to 7 of docs/CONTROL.md §3 on a parsed line.
fn request_of_value(v: Value) -> Result<Request, RequestError> {
    let err = |id: Value, code, message: String| RequestError { id, code, message };
    let Value::Object(mut map) = v else {
        return Err(err(
            Value::Null,
            ErrorCode::BadRequest,
            "a request is a JSON object".into(),
        ));
    };
    let id = map.remove("id").unwrap_or(Value::Null);
    match map.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
        None => {
            return Err(err(
                id,
                ErrorCode::BadRequest,
                "missing protocol version \"v\"".into(),
            ))
        }
        Some(other) => {
            return Err(err(
                id,
                ErrorCode::UnsupportedVersion,
                format!(
                "protocol version {other} is not supported (this daemon speaks {PROTOCOL_VERSION})"
            ),
            ))
        }
    }
    let key = match map.remove("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(err(
                id,
                ErrorCode::BadRequest,
                "\"key\" is an alias or an id".into(),
            ))
        }
    };
    let op_name = match map.get("op") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(err(id, ErrorCode::BadRequest, "missing \"op\"".into())),
    };
    match serde_json::from_value::<Op>(Value::Object(map)) {
        Ok(op) => Ok(Request { id, op, key }),
        Err(e) if e.to_string().contains("unknown variant") => Err(err(
            id,
            ErrorCode::UnknownOp,
            format!("unknown op \"{op_name}\""),
        )),
        Err(e) => Err(err(
            id,
            ErrorCode::BadRequest,
            format!("bad arguments for \"{op_name}\": {e}"),
        )),
    }
}

/// The `error` object of a failed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// A stable code ([`ErrorCode::as_str`]); kept as text, so a code a
    /// newer daemon adds still reaches the user.
    pub code: String,
    /// Text for humans.
    pub message: String,
}

/// A response line: `{"v": 1, "id": …, "ok": true, "result": {…}}` or
/// `{"v": 1, "id": …, "ok": false, "error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Always [`PROTOCOL_VERSION`].
    pub v: u64,
    /// The request's id (null if it was not readable).
    pub id: Value,
    /// Success?
    pub ok: bool,
    /// When `ok`: the op's result (one of the [`results`] types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// When not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl Response {
    /// The line (without newline), keys in alphabetical order.
    pub fn to_line(&self) -> String {
        serde_json::to_value(self)
            .expect("a response always serializes")
            .to_string()
    }
}

/// One line the daemon sends: a [`Response`], or (before the response of
/// `audit_export`) one exported record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    /// The response that ends the exchange.
    Response(Response),
    /// A streamed record.
    Record(ExportedLine),
    /// A streamed chain break (the records after it follow).
    Break(ExportedBreak),
}

/// A success response line (without newline).
pub fn ok_line(id: &Value, result: Value) -> String {
    Response {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        ok: true,
        result: Some(result),
        error: None,
    }
    .to_line()
}

/// An error response line (without newline).
pub fn error_line(id: &Value, code: ErrorCode, message: &str) -> String {
    Response {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        ok: false,
        result: None,
        error: Some(WireError {
            code: code.as_str().into(),
            message: message.into(),
        }),
    }
    .to_line()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_ops() {
        let r = parse_request(br#"{"v":1,"id":7,"op":"status"}"#).unwrap();
        assert_eq!(r.op, Op::Status);
        assert_eq!(r.id, json!(7));
        let r = parse_request(br#"{"v":1,"op":"trim","min_version":3}"#).unwrap();
        assert_eq!(
            r.op,
            Op::Trim {
                min_version: 3,
                force: false
            }
        );
        let r = parse_request(
            br#"{"v":1,"op":"schedule_deletion","version":2,"wait":"1s","confirm":true}"#,
        )
        .unwrap();
        assert_eq!(
            r.op,
            Op::ScheduleDeletion {
                version: 2,
                wait: Some("1s".into()),
                confirm: true
            }
        );
        let r = parse_request(br#"{"v":1,"op":"set_rotation_period","period":null}"#).unwrap();
        assert_eq!(
            r.op,
            Op::SetRotationPeriod {
                period: None,
                allow_short: false
            }
        );
    }

    #[test]
    fn errors_have_stable_codes() {
        let code = |l: &[u8]| parse_request(l).unwrap_err().code;
        assert_eq!(code(b"{nope"), ErrorCode::BadRequest);
        assert_eq!(code(b"[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"op":"status"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(br#"{"v":2,"op":"status"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(br#"{"v":1,"op":"launch_missiles"}"#),
            ErrorCode::UnknownOp
        );
        assert_eq!(code(br#"{"v":1,"op":"trim"}"#), ErrorCode::BadRequest);
        assert_eq!(
            parse_request(br#"{"v":1,"op":"status","extra":1}"#)
                .unwrap()
                .op,
            Op::Status
        );
        assert_eq!(code(&vec![b' '; MAX_LINE + 1]), ErrorCode::TooLarge);
        let e = parse_request(br#"{"v":1,"id":"x","op":"nope"}"#).unwrap_err();
        assert_eq!(e.id, json!("x"));
    }

    #[test]
    fn response_lines_are_single_line_json() {
        let l = ok_line(&json!(1), json!({"a": "b\nc"}));
        assert!(!l.contains('\n'));
        let v: Value =
            serde_json::from_str(&error_line(&Value::Null, ErrorCode::Busy, "x")).unwrap();
        assert_eq!(v["error"]["code"], "busy");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&bytes);
        }
    }
}
