//! The control protocol, version 1: one JSON object per line each way
//! (docs/CONTROL.md). Pure: parses request lines and builds response lines.
//!
//! Owns: the request and error-code vocabulary and the line-length cap.
//! Must never: touch the volume or sockets.

use serde::Deserialize;
use serde_json::{json, Value};

/// Protocol version spoken here.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        }
    }
}

/// A request's operation and arguments. Unknown extra fields are ignored,
/// so a newer client's optional arguments do not break an older daemon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
}

/// A grant token: a bearer credential, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct GrantToken(pub String);

impl std::fmt::Debug for GrantToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantToken(<redacted>)")
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed back in the response.
    pub id: Value,
    /// What to do.
    pub op: Op,
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
    let op_name = match map.get("op") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(err(id, ErrorCode::BadRequest, "missing \"op\"".into())),
    };
    match serde_json::from_value::<Op>(Value::Object(map)) {
        Ok(op) => Ok(Request { id, op }),
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

/// A success response line (without newline).
pub fn ok_line(id: &Value, result: Value) -> String {
    json!({"v": PROTOCOL_VERSION, "id": id, "ok": true, "result": result}).to_string()
}

/// An error response line (without newline).
pub fn error_line(id: &Value, code: ErrorCode, message: &str) -> String {
    json!({"v": PROTOCOL_VERSION, "id": id, "ok": false, "error": {"code": code.as_str(), "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(r.op, Op::SetRotationPeriod { period: None });
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
