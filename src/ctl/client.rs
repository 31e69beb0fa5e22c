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
//! streaming operations, the lines before it), and checking who answers:
//! the server's `SO_PEERCRED` uid must be root or the mount owner
//! ([`ServerCheck`]), so a fake daemon on a socket path cannot answer a
//! revocation with "revoked".
//! Must never: interpret results (the caller formats them), or send a
//! request (a grant token, …) to a server it has not checked.

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

/// Which uids may serve a control socket: root and the mount owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCheck {
    allowed: Vec<u32>,
    /// Who the expected owner is, in words (for the error).
    why: String,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

/// The user that mounted the FUSE file system at `mountpoint` (its
/// `user_id=` option in /proc/self/mountinfo), if it is one.
pub fn mount_owner(mountpoint: &Path) -> Option<u32> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    let target = mountpoint.as_os_str().as_encoded_bytes();
    let mut owner = None;
    for line in info.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if fields.len() < sep + 4 || fields.len() < 5 {
            continue;
        }
        if unescape(fields[4]) != target || !fields[sep + 1].starts_with(b"fuse") {
            continue;
        }
        // The last match is the one on top.
        owner = fields[sep + 3]
            .split(|b| *b == b',')
            .find_map(|o| o.strip_prefix(b"user_id="))
            .and_then(|u| std::str::from_utf8(u).ok()?.parse().ok());
    }
    owner
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\'
            && i + 3 < f.len()
            && f[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((f[i + 1] - b'0') * 64 + (f[i + 2] - b'0') * 8 + (f[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

impl ServerCheck {
    /// For a socket path alone: root, this process's user, or the owner
    /// of the socket's directory (the daemon's user for the default
    /// directories, which the daemon keeps private). For
    /// `/tmp/sealfs-UID` the directory must be owned by UID itself (a
    /// directory someone else made there first is refused).
    pub fn for_socket(socket: &Path) -> std::io::Result<ServerCheck> {
        use std::os::unix::fs::MetadataExt;
        let dir = socket.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let owner = match std::fs::metadata(dir) {
            Ok(m) => m.uid(),
            // Nothing to connect to (the connect says so): root or us.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => euid(),
            Err(e) => return Err(e),
        };
        if let Some(uid) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("sealfs-"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            if dir.parent() == Some(Path::new("/tmp")) && owner != uid {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the socket directory {} is owned by uid {owner}, not by uid {uid}: refusing to use a socket someone else may have put there",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(ServerCheck {
            allowed: vec![0, euid(), owner],
            why: format!(
                "root, uid {}, or the owner of {} (uid {owner})",
                euid(),
                dir.display()
            ),
        })
    }

    /// For the mount at `mountpoint`: root or the user who mounted it
    /// (/proc/self/mountinfo); [`ServerCheck::for_socket`] if it is not
    /// a FUSE mount.
    pub fn for_mount(mountpoint: &Path, socket: &Path) -> std::io::Result<ServerCheck> {
        match mount_owner(mountpoint) {
            Some(uid) => Ok(ServerCheck {
                allowed: vec![0, uid],
                why: format!("root or the mount owner (uid {uid})"),
            }),
            None => Self::for_socket(socket),
        }
    }

    /// Only these uids (and nobody else).
    pub fn uids(allowed: &[u32]) -> ServerCheck {
        ServerCheck {
            allowed: allowed.to_vec(),
            why: format!("uid {allowed:?}"),
        }
    }

    /// Checks the server behind `s` (its `SO_PEERCRED`).
    pub fn check(&self, s: &UnixStream) -> Result<(), CallError> {
        use std::os::fd::AsFd;
        let uid = super::socket::peer_cred(s.as_fd())
            .map(|c| c.uid)
            .ok_or_else(|| std::io::Error::other("cannot read the server's credentials"))?;
        if self.allowed.contains(&uid) {
            Ok(())
        } else {
            Err(CallError::UntrustedServer {
                uid,
                expected: self.why.clone(),
            })
        }
    }
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
    /// The socket is served by a process of another user than root or the
    /// mount owner: nothing was sent to it.
    #[error("the control socket is served by uid {uid}, not by {expected}: refusing to talk to it (a fake daemon?)")]
    UntrustedServer {
        /// The server's uid.
        uid: u32,
        /// Who may serve it.
        expected: String,
    },
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

fn send(
    socket: &Path,
    req: &Request,
    check: &ServerCheck,
) -> Result<BufReader<UnixStream>, CallError> {
    let mut s = UnixStream::connect(socket)?;
    check.check(&s)?;
    s.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    writeln!(s, "{}", req.to_line())?;
    Ok(BufReader::new(s))
}

/// Sends `req` and returns its result as `R` (the result type of its op,
/// e.g. [`super::protocol::StatusResult`] for `status`), or the daemon's
/// error, or an I/O error. The server is checked with
/// [`ServerCheck::for_socket`].
pub fn call<R: DeserializeOwned>(socket: &Path, req: &Request) -> Result<R, CallError> {
    call_checked(socket, req, &ServerCheck::for_socket(socket)?)
}

/// [`call`], with the server checked by `check`.
pub fn call_checked<R: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    check: &ServerCheck,
) -> Result<R, CallError> {
    let mut reader = send(socket, req, check)?;
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
    call_stream_checked(socket, req, &ServerCheck::for_socket(socket)?, on_line)
}

/// [`call_stream`], with the server checked by `check`.
pub fn call_stream_checked<R: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    check: &ServerCheck,
    on_line: &mut dyn FnMut(Streamed<'_>),
) -> Result<R, CallError> {
    let mut reader = send(socket, req, check)?;
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
