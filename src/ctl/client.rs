//! The client side of the control socket, for `sealfs ctl` and any Rust
//! program: send one [`Request`], read its typed result.
//!
//! ```no_run
//! use sealfs::ctl::client::call;
//! use sealfs::ctl::protocol::{Op, Request, RotateResult};
//!
//! # fn main() -> Result<(), sealfs::ctl::client::CallError> {
//! let r: RotateResult = call("/run/sealfs/mnt-c3695a369abd8156.sock".as_ref(), &Request::new(Op::Rotate))?;
//! println!("key version {} is now primary", r.primary);
//! # Ok(()) }
//! ```
//!
//! Owns: sending one request line and reading its response line (and, for
//! streaming operations, the lines before it).
//! Must never: interpret results (the caller formats them).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::protocol::{ExportedBreak, ExportedLine, Line, Request, Response};

/// How long a call waits for its response (a census or fsck is a full scan).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// An error response from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// Stable error code (docs/CONTROL.md §5).
    pub code: String,
    /// Message.
    pub message: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be reached, or the exchange broke off, or the
    /// response was not what the protocol says.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("{} ({})", .0.message, .0.code)]
    Remote(RemoteError),
}

fn bad_response(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad response: {e}"),
    )
}

fn result_of<R: DeserializeOwned>(r: Response) -> Result<R, CallError> {
    if r.ok {
        let v = r.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v).map_err(|e| CallError::Io(bad_response(e)))
    } else {
        let e = r.error.unwrap_or_else(|| super::protocol::WireError {
            code: "unknown".into(),
            message: String::new(),
        });
        Err(CallError::Remote(RemoteError {
            code: e.code,
            message: e.message,
        }))
    }
}

fn send(socket: &Path, req: &Request) -> std::io::Result<BufReader<UnixStream>> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    writeln!(s, "{}", req.to_line())?;
    Ok(BufReader::new(s))
}

/// Sends `req` and returns its result as `R` (the result type of its op,
/// e.g. [`super::protocol::StatusResult`] for `status`), or the daemon's
/// error, or an I/O error.
pub fn call<R: DeserializeOwned>(socket: &Path, req: &Request) -> Result<R, CallError> {
    let mut reader = send(socket, req)?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let r: Response = serde_json::from_str(&line).map_err(bad_response)?;
    result_of(r)
}

/// A line streamed before a response.
#[derive(Debug)]
pub enum Streamed<'a> {
    /// An exported record.
    Record(&'a ExportedLine),
    /// A break of the audit chain (the records after it follow).
    Break(&'a ExportedBreak),
}

/// Like [`call`] for operations that stream lines before their response
/// (`audit_export`): each streamed record or break goes to `on_line`.
pub fn call_stream<R: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    on_line: &mut dyn FnMut(Streamed<'_>),
) -> Result<R, CallError> {
    let mut reader = send(socket, req)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection before its response",
            )
            .into());
        }
        match serde_json::from_str(&line).map_err(bad_response)? {
            Line::Record(r) => on_line(Streamed::Record(&r)),
            Line::Break(b) => on_line(Streamed::Break(&b)),
            Line::Response(r) => return result_of(r),
        }
    }
}
