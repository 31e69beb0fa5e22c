//! The control socket: binding it, accepting connections, checking peers,
//! reading request lines and writing response lines.
//!
//! Owns: the socket file (mode 0600, or 0666 for mounts with allow_other),
//! `SO_PEERCRED` (the mount owner and root administer; anyone else may only
//! retire their own grant), one thread per connection with read/write
//! timeouts, the cap on concurrent connections, and the line-length cap.
//! Must never: decide what a request does (that is [`super::handlers`]),
//! block file I/O, or outlive its [`ControlServer`] (dropping it stops
//! accepting and removes the file).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::handlers;
use super::protocol::{error_line, parse_request, ErrorCode, Op, MAX_LINE};
use super::ControlContext;
use crate::format::audit::Principal;
use crate::policy::{read_proc, Event};

const MAX_CONNECTIONS: usize = 32;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening control socket: stops accepting and removes its file when
/// dropped.
pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    stopped: Arc<AtomicBool>,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop (accept fails on a shut-down listener).
        // SAFETY: a valid socket fd, owned by `self.listener`.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One of the [`MAX_CONNECTIONS`] connection slots, given back on drop.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The credentials of a socket peer at connect time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) pid: u32,
}

impl Peer {
    /// The peer as an audit principal.
    pub(super) fn principal(self) -> Principal {
        Principal {
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            comm: read_proc(self.pid).0,
        }
    }
}

fn peer_cred(s: &UnixStream) -> Option<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(Peer {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid as u32,
    })
}

/// Binds the socket at `path` (mode 0600) and serves it on a thread.
pub fn serve(path: &Path, ctx: Arc<ControlContext>) -> std::io::Result<ControlServer> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "control socket path {} exists and is not a socket; choose another --ctl-socket",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "control socket {} is in use by another mount",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask only affects this process's file creation mode.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: restores the previous umask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    let mode = if ctx.shared_socket { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let server = ControlServer {
        path: path.to_path_buf(),
        listener: listener.try_clone()?,
        stopped: Arc::new(AtomicBool::new(false)),
    };
    let stopped = server.stopped.clone();
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("sealfs-ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = conn else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let mut s = stream;
                    let _ = writeln!(
                        s,
                        "{}",
                        error_line(
                            &Value::Null,
                            ErrorCode::Busy,
                            "too many control connections"
                        )
                    );
                    continue;
                }
                let ctx = ctx.clone();
                // Frees the slot even if serving the connection panics, or
                // if its thread cannot start (the closure is dropped then).
                let slot = ConnectionSlot(active.clone());
                let _ = std::thread::Builder::new()
                    .name("sealfs-ctl-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        serve_connection(stream, &ctx);
                    });
            }
        })?;
    Ok(server)
}

fn serve_connection(stream: UnixStream, ctx: &ControlContext) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = peer_cred(&stream);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        // Read at most MAX_LINE + 1 bytes of one line.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let complete = line.last() == Some(&b'\n');
        if !complete && n > MAX_LINE {
            let _ = writeln!(
                out,
                "{}",
                error_line(
                    &Value::Null,
                    ErrorCode::TooLarge,
                    &format!("request longer than {MAX_LINE} bytes; closing")
                )
            );
            return;
        }
        if complete {
            line.pop();
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let reply = match (parse_request(&line), peer) {
            (Err(e), _) => error_line(&e.id, e.code, &e.message),
            (Ok(req), Some(p)) if p.uid == 0 || p.uid == ctx.owner_uid => {
                handlers::handle(ctx, &req, p, &mut out)
            }
            // Anyone may retire a grant they hold, with its token.
            (Ok(req), Some(p)) if matches!(req.op, Op::GrantRetire { .. }) => {
                handlers::handle(ctx, &req, p, &mut out)
            }
            (Ok(req), p) => {
                crate::metrics::denied(crate::metrics::Denial::ControlPeer);
                if let Some(p) = p {
                    let _ = ctx.access.record_principal(
                        p.principal(),
                        Event {
                            outcome: "denied",
                            error: Some("not the mount owner or root".into()),
                            ..Event::ok("control", None)
                        },
                    );
                }
                error_line(
                    &req.id,
                    ErrorCode::Forbidden,
                    "only the mount owner and root may use this socket (others may only retire their own grants)",
                )
            }
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}
