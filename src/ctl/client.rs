//! The client side of the control socket, for `sealfs ctl`.
//!
//! Owns: sending one request line and reading its response line (and, for
//! streaming operations, the lines before it).
//! Must never: interpret results (the CLI formats them).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::protocol::PROTOCOL_VERSION;

/// An error response from the daemon.
#[derive(Debug, Clone)]
pub struct RemoteError {
    /// Stable error code.
    pub code: String,
    /// Message.
    pub message: String,
}

/// Sends `op` (a JSON object with "op" and its arguments) and returns the
/// result, the daemon's error, or an I/O error.
pub fn call(socket: &Path, mut op: Value) -> std::io::Result<Result<Value, RemoteError>> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    op["v"] = Value::from(PROTOCOL_VERSION);
    op["id"] = Value::from(1);
    writeln!(s, "{op}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {e}"),
        )
    })?;
    if v["ok"] == Value::Bool(true) {
        Ok(Ok(v["result"].clone()))
    } else {
        Ok(Err(RemoteError {
            code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
            message: v["error"]["message"].as_str().unwrap_or("").to_string(),
        }))
    }
}

/// Like [`call`] for operations that stream lines before their response
/// (`audit_export`): every line without an `ok` field goes to `on_line`.
pub fn call_stream(
    socket: &Path,
    mut op: Value,
    on_line: &mut dyn FnMut(&Value),
) -> std::io::Result<Result<Value, RemoteError>> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    op["v"] = Value::from(PROTOCOL_VERSION);
    op["id"] = Value::from(1);
    writeln!(s, "{op}")?;
    let mut reader = BufReader::new(s);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection before its response",
            ));
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad response: {e}"),
            )
        })?;
        match v.get("ok") {
            None => on_line(&v),
            Some(Value::Bool(true)) => return Ok(Ok(v["result"].clone())),
            Some(_) => {
                return Ok(Err(RemoteError {
                    code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                    message: v["error"]["message"].as_str().unwrap_or("").to_string(),
                }))
            }
        }
    }
}
