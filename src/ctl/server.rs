//! The control socket: accepting connections, admitting them by peer,
//! reading request lines and writing response lines.
//!
//! Owns: `SO_PEERCRED` admission (the mount owner and root administer;
//! anyone else may only retire their own grant), the connection limits
//! ([`Limits`]: a total, slots kept for the owner and root that nobody
//! else can take, a cap per other uid), the idle timeout (a connection
//! that does not complete a request line in time is closed, however
//! slowly it trickles bytes), the write timeout, the line-length caps, and
//! one thread per admitted connection. The socket file itself is
//! [`super::socket`]'s.
//! Must never: decide what a request does (that is [`super::handlers`]),
//! block file I/O, let one uid take the slots another needs, or outlive
//! its [`ControlServer`] (dropping it stops accepting and removes the
//! file).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use super::handlers;
use super::protocol::{error_line, parse_request, ErrorCode, Op, MAX_LINE};
use super::socket::{self, BoundSocket};
use super::ControlContext;
use crate::format::audit::Principal;
use crate::policy::read_proc;

/// The connection limits of a control socket (docs/CONTROL.md §1).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, all peers together.
    pub total: usize,
    /// Of those, how many only the mount owner and root may use: other
    /// users together never get more than `total - reserved`.
    pub reserved: usize,
    /// Connections one uid other than the owner and root may hold.
    pub per_uid: usize,
    /// How long the owner or root may take to send a whole request line
    /// (from the connection's start or the previous response).
    pub idle_admin: Duration,
    /// The same for everyone else.
    pub idle_other: Duration,
    /// How long a response may wait for the client to read it.
    pub write_timeout: Duration,
    /// Longest request line from someone other than the owner and root
    /// (their only request, `grant_retire`, is a few hundred bytes).
    pub max_line_other: usize,
}

impl Limits {
    /// The limits every mount uses.
    pub const DEFAULT: Limits = Limits {
        total: 64,
        reserved: 16,
        per_uid: 4,
        idle_admin: Duration::from_secs(60),
        idle_other: Duration::from_secs(10),
        write_timeout: Duration::from_secs(30),
        max_line_other: 4096,
    };
}

/// A listening control socket: stops accepting and removes its file when
/// dropped.
pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    bound: BoundSocket,
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
        self.bound.remove();
    }
}

/// The credentials of a socket peer at connect time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) pid: u32,
    /// The peer process's start time when it connected (`None`: gone
    /// already): its supplementary groups are read only while this same
    /// process holds the pid.
    pub(super) start: Option<u64>,
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

    /// The peer's supplementary groups (SO_PEERCRED gives the primary
    /// one only), read from `/proc/PID/status` when a key policy asks:
    /// empty once the process that connected no longer holds its pid,
    /// or if it runs as another uid now.
    pub(super) fn supplementary_groups(self) -> Vec<u32> {
        match self.start {
            Some(start) => crate::policy::requester::read_groups_of(self.pid, start, self.uid),
            None => Vec::new(),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Connections of peers other than the owner and root.
    others: usize,
    by_uid: HashMap<u32, usize>,
}

/// The open connections, by peer.
struct Slots {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// One admitted connection's slot, given back on drop (also when serving
/// it panics, or its thread cannot start).
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
    admin: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock();
        c.total -= 1;
        if !self.admin {
            c.others -= 1;
            if let Some(n) = c.by_uid.get_mut(&self.uid) {
                *n -= 1;
                if *n == 0 {
                    c.by_uid.remove(&self.uid);
                }
            }
        }
    }
}

impl Slots {
    /// A slot for a peer with `uid` (`admin`: the owner or root), or why not.
    fn take(self: &Arc<Self>, uid: u32, admin: bool) -> Result<Slot, &'static str> {
        let l = self.limits;
        let mut c = self.counts.lock();
        if c.total >= l.total {
            return Err("too many control connections");
        }
        if !admin {
            if c.others >= l.total - l.reserved {
                return Err("too many control connections from other users");
            }
            if c.by_uid.get(&uid).copied().unwrap_or(0) >= l.per_uid {
                return Err("too many control connections from this user");
            }
            c.others += 1;
            *c.by_uid.entry(uid).or_default() += 1;
        }
        c.total += 1;
        Ok(Slot {
            slots: self.clone(),
            uid,
            admin,
        })
    }
}

/// Refuses a connection with one error line, without waiting on the peer.
fn refuse(stream: UnixStream, why: &str) {
    let _ = stream.set_nonblocking(true);
    let mut s = stream;
    let _ = writeln!(s, "{}", error_line(&Value::Null, ErrorCode::Busy, why));
}

/// Binds the socket at `path` (mode 0600, 0666 for an `allow_other`
/// mount) and serves it on a thread with [`Limits::DEFAULT`].
pub fn serve(path: &Path, ctx: Arc<ControlContext>) -> std::io::Result<ControlServer> {
    serve_with(path, ctx, Limits::DEFAULT)
}

/// [`serve`] with other limits.
pub fn serve_with(
    path: &Path,
    ctx: Arc<ControlContext>,
    limits: Limits,
) -> std::io::Result<ControlServer> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!("control socket path {} names no file", path.display()),
        ));
    };
    // The default directory is private and checked; one the user chose
    // with --ctl-socket is used as it is.
    // SAFETY: geteuid has no failure mode.
    let dir_fd = if dir == socket::default_socket_dir(unsafe { libc::geteuid() }) {
        socket::open_private_dir(dir, ctx.shared_socket)?
    } else {
        socket::open_chosen_dir(dir)?
    };
    let (listener, bound) = socket::bind(dir_fd, name, path, ctx.shared_socket)?;
    let server = ControlServer {
        path: path.to_path_buf(),
        listener: listener.try_clone()?,
        bound,
        stopped: Arc::new(AtomicBool::new(false)),
    };
    let stopped = server.stopped.clone();
    let slots = Arc::new(Slots {
        limits,
        counts: Mutex::new(Counts::default()),
    });
    std::thread::Builder::new()
        .name("sealfs-ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = conn else { continue };
                let Some(cred) = socket::peer_cred(stream.as_fd()) else {
                    continue;
                };
                let peer = Peer {
                    uid: cred.uid,
                    gid: cred.gid,
                    pid: cred.pid,
                    start: crate::policy::requester::read_start_time(cred.pid),
                };
                let admin = peer.uid == 0 || peer.uid == ctx.owner_uid;
                let slot = match slots.take(peer.uid, admin) {
                    Ok(s) => s,
                    Err(why) => {
                        crate::metrics::denied(crate::metrics::Denial::ControlPeer);
                        refuse(stream, why);
                        continue;
                    }
                };
                let ctx = ctx.clone();
                let _ = std::thread::Builder::new()
                    .name("sealfs-ctl-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        serve_connection(stream, &ctx, peer, admin, &limits);
                    });
            }
        })?;
    Ok(server)
}

/// How reading one request line ended.
enum Read {
    /// A line (without its newline; a last line without one counts too).
    Line(Vec<u8>),
    /// The peer closed the connection.
    Closed,
    /// No whole line came in time.
    Idle,
    /// The line is longer than the cap.
    TooLong,
}

/// Reads one request line that must be complete by `deadline`: a peer
/// that trickles bytes does not get more time than one that sends none.
fn read_line(reader: &mut BufReader<UnixStream>, deadline: Instant, max: usize) -> Read {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || reader.get_ref().set_read_timeout(Some(left)).is_err() {
            return Read::Idle;
        }
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Read::Idle
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Read::Closed,
        };
        if buf.is_empty() {
            return if line.is_empty() {
                Read::Closed
            } else {
                Read::Line(line)
            };
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Read::TooLong;
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Read::Line(line);
        }
    }
}

fn serve_connection(
    stream: UnixStream,
    ctx: &ControlContext,
    peer: Peer,
    admin: bool,
    limits: &Limits,
) {
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let (idle, max_line) = if admin {
        (limits.idle_admin, MAX_LINE)
    } else {
        (limits.idle_other, limits.max_line_other.min(MAX_LINE))
    };
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader, Instant::now() + idle, max_line) {
            Read::Line(l) => l,
            Read::Closed => return,
            Read::Idle => {
                let _ = writeln!(
                    out,
                    "{}",
                    error_line(
                        &Value::Null,
                        ErrorCode::Busy,
                        &format!("no complete request within {} s; closing", idle.as_secs())
                    )
                );
                return;
            }
            Read::TooLong => {
                let _ = writeln!(
                    out,
                    "{}",
                    error_line(
                        &Value::Null,
                        ErrorCode::TooLarge,
                        &format!("request longer than {max_line} bytes; closing")
                    )
                );
                return;
            }
        };
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let reply = match parse_request(&line) {
            Err(e) => error_line(&e.id, e.code, &e.message),
            Ok(req) if admin => handlers::handle(ctx, &req, peer, &mut out),
            // Anyone may retire a grant they hold, with its token.
            Ok(req) if matches!(req.op, Op::GrantRetire { .. }) => {
                handlers::handle(ctx, &req, peer, &mut out)
            }
            // Key administration: the key's policy decides (issue 22).
            Ok(req) if super::key_handlers::admin_action(&req.op, req.key.is_some()).is_some() => {
                handlers::handle(ctx, &req, peer, &mut out)
            }
            Ok(req) => {
                crate::metrics::denied(crate::metrics::Denial::ControlPeer);
                handlers::deny_control(ctx, peer);
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
