//! The client side of the control socket, for `sealfs ctl`.
//!
//! Owns: sending one request line and reading one response line.
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
