//! The control plane: a Unix socket per mount serving the protocol of
//! [`protocol`] (docs/CONTROL.md), the client side for `sealfs ctl`, and the
//! scheduler that runs automatic rotation and due key destructions.
//!
//! Owns: the socket (mode 0600, peer checked with SO_PEERCRED: the mount
//! owner and root administer), one thread per connection with read/write
//! timeouts and a cap on concurrent connections, and the mapping of requests
//! onto [`Volume`] calls.
//! Must never: block file I/O (nothing here takes a file lock; long jobs
//! run on their own thread), or put key material in a response.

pub mod client;
pub mod protocol;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::format::audit::{AuditRecord, Principal};
use crate::format::config::{hex, parse_duration};
use crate::format::grants::{self as gfmt, Grant, Grantee, OpSet};
use crate::format::keyring::KeyState;
use crate::fs::CacheControl;
use crate::keyring::now_secs;
use crate::policy::audit::verify_log;
use crate::policy::grants::GrantStoreError;
use crate::policy::{read_proc, AccessControl, Event};
use crate::volume::walk::{Census, RewrapProgress};
use crate::volume::{Volume, VolumeError};
use protocol::{error_line, ok_line, parse_request, ErrorCode, Op, Request, MAX_LINE};

const MAX_CONNECTIONS: usize = 32;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const SCHEDULE_TICK: Duration = Duration::from_secs(5);

/// The default socket path of the mount at `mountpoint` (canonical path):
/// `/run/sealfs/` for root, `$XDG_RUNTIME_DIR/sealfs/` (or
/// `/tmp/sealfs-UID/`) otherwise, named after a hash of the mount point.
pub fn default_socket_path(mountpoint: &Path) -> PathBuf {
    let h = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    let name = format!("mnt-{}.sock", &hex(&h)[..16]);
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    let dir = if uid == 0 {
        PathBuf::from("/run/sealfs")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(x).join("sealfs")
    } else {
        PathBuf::from(format!("/tmp/sealfs-{uid}"))
    };
    dir.join(name)
}

/// Everything a request handler may touch.
pub struct ControlContext {
    vol: Arc<Volume>,
    cache: CacheControl,
    rewrap: Arc<RewrapProgress>,
    census: Mutex<Option<Census>>,
    mountpoint: PathBuf,
    owner_uid: u32,
    policy: Arc<AccessControl>,
    /// Socket mode 0666 (with allow_other) so grantees can retire their grants.
    shared_socket: bool,
}

impl ControlContext {
    /// A context for the mount of `vol` at `mountpoint`, administered by `owner_uid` and root.
    /// `policy` holds the grants and audit log the frontend uses; with
    /// `shared_socket` (mounts with allow_other) any local user may connect,
    /// though only to retire their own grants.
    pub fn new(
        vol: Arc<Volume>,
        cache: CacheControl,
        mountpoint: PathBuf,
        owner_uid: u32,
        policy: Arc<AccessControl>,
        shared_socket: bool,
    ) -> Arc<Self> {
        Arc::new(ControlContext {
            vol,
            cache,
            rewrap: Arc::new(RewrapProgress::default()),
            census: Mutex::new(None),
            mountpoint,
            owner_uid,
            policy,
            shared_socket,
        })
    }
}

/// A listening control socket; removes its file when dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
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
struct Peer {
    uid: u32,
    gid: u32,
    pid: u32,
}

impl Peer {
    fn principal(self) -> Principal {
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
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("sealfs-ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
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
    Ok(ControlServer {
        path: path.to_path_buf(),
    })
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
                if let Op::AuditExport { .. } = &req.op {
                    match export_audit(ctx, &req.op, &mut out) {
                        Ok(v) => ok_line(&req.id, v),
                        Err((code, msg)) => error_line(&req.id, code, &msg),
                    }
                } else {
                    match handle(ctx, &req, p) {
                        Ok(v) => ok_line(&req.id, v),
                        Err((code, msg)) => error_line(&req.id, code, &msg),
                    }
                }
            }
            // Anyone may retire a grant they hold, with its token.
            (Ok(req), Some(p)) if matches!(req.op, Op::GrantRetire { .. }) => {
                match handle(ctx, &req, p) {
                    Ok(v) => ok_line(&req.id, v),
                    Err((code, msg)) => error_line(&req.id, code, &msg),
                }
            }
            (Ok(req), p) => {
                crate::metrics::denied(crate::metrics::Denial::ControlPeer);
                if let Some(p) = p {
                    let _ = ctx.policy.record_principal(
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

type Handled = Result<Value, (ErrorCode, String)>;

fn vol_err(e: VolumeError) -> (ErrorCode, String) {
    let code = match &e {
        VolumeError::ReadOnly => ErrorCode::ReadOnly,
        VolumeError::Keyring(crate::keyring::KeyringError::Lifecycle(_))
        | VolumeError::Config(_) => ErrorCode::Invalid,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

fn state_name(s: KeyState) -> &'static str {
    match s {
        KeyState::Enabled => "enabled",
        KeyState::Retired => "retired",
        KeyState::PendingDeletion => "pending_deletion",
        KeyState::Destroyed => "destroyed",
    }
}

fn status(ctx: &ControlContext) -> Value {
    let cfg = ctx.vol.config();
    let census = ctx.census.lock().clone();
    let kr = ctx.vol.keyring().read();
    let versions: Vec<Value> = kr
        .versions()
        .iter()
        .map(|v| {
            let mut o = json!({
                "version": v.version,
                "state": state_name(v.state),
                "created": v.created,
                "primary": v.version == kr.primary(),
            });
            if v.state == KeyState::PendingDeletion {
                o["deletion_due"] = json!(v.deletion_due);
            }
            if let Some(c) = &census {
                o["files"] = json!(c.files.get(&v.version).copied().unwrap_or(0));
                o["dirs"] = json!(c.dirs.get(&v.version).copied().unwrap_or(0));
            }
            o
        })
        .collect();
    let primary = kr.primary();
    drop(kr);
    json!({
        "volume_id": cfg.volume_id,
        "format_version": cfg.format_version,
        "cipherdir": std::fs::canonicalize(ctx.vol.cipherdir()).unwrap_or_else(|_| ctx.vol.cipherdir().to_path_buf()),
        "mountpoint": ctx.mountpoint,
        "read_only": ctx.vol.read_only(),
        "disabled": ctx.vol.is_disabled(),
        "primary": primary,
        "versions": versions,
        "rotation_period": cfg.rotation_period,
        "next_rotation": ctx.vol.next_rotation(),
        "rewrap": ctx.rewrap.report(),
        "census": census,
        "grants": ctx.policy.grant_store().map(|g| g.list(None, None).len()),
        "audit": ctx.policy.audit_log().map(|a| {
            let (segment, next_seq, key_version) = a.position();
            json!({"segment": segment, "records": next_seq - 1, "key_version": key_version})
        }),
    })
}

/// [`crate::metrics::METRICS`] plus the state of `vol`'s keyring (key versions by state,
/// primary version, disabled flag), as served by the control op `metrics`.
fn render_metrics(vol: &Volume) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let (primary, disabled, states) = {
        let kr = vol.keyring().read();
        let mut states = [0u64; 4];
        for v in kr.versions() {
            let i = match v.state {
                KeyState::Enabled => 0,
                KeyState::Retired => 1,
                KeyState::PendingDeletion => 2,
                KeyState::Destroyed => 3,
            };
            states[i] += 1;
        }
        (kr.primary(), kr.disabled(), states)
    };
    let _ = writeln!(
        o,
        "# HELP sealfs_key_primary_version The master key version new keys are wrapped under."
    );
    let _ = writeln!(o, "# TYPE sealfs_key_primary_version gauge");
    let _ = writeln!(o, "sealfs_key_primary_version {primary}");
    let _ = writeln!(
        o,
        "# HELP sealfs_key_disabled 1 while the key is disabled (all file I/O refused)."
    );
    let _ = writeln!(o, "# TYPE sealfs_key_disabled gauge");
    let _ = writeln!(o, "sealfs_key_disabled {}", u8::from(disabled));
    let _ = writeln!(
        o,
        "# HELP sealfs_key_versions Master key versions, by lifecycle state."
    );
    let _ = writeln!(o, "# TYPE sealfs_key_versions gauge");
    for (i, name) in ["enabled", "retired", "pending_deletion", "destroyed"]
        .iter()
        .enumerate()
    {
        let _ = writeln!(o, "sealfs_key_versions{{state=\"{name}\"}} {}", states[i]);
    }
    let _ = writeln!(
        o,
        "# HELP sealfs_read_only 1 if the volume is mounted read-only."
    );
    let _ = writeln!(o, "# TYPE sealfs_read_only gauge");
    let _ = writeln!(o, "sealfs_read_only {}", u8::from(vol.read_only()));
    crate::metrics::METRICS.render(&o)
}

fn run_census(ctx: &ControlContext) -> Result<Census, (ErrorCode, String)> {
    let c = ctx.vol.census().map_err(vol_err)?;
    *ctx.census.lock() = Some(c.clone());
    Ok(c)
}

/// Records a control operation before it runs (fail-closed: no record, no operation).
fn audit_control(
    ctx: &ControlContext,
    peer: Peer,
    op: &str,
    key_version: Option<u32>,
    detail: Option<String>,
) -> Result<(), (ErrorCode, String)> {
    ctx.policy
        .record_principal(
            peer.principal(),
            Event {
                key_version,
                detail,
                ..Event::ok(op, None)
            },
        )
        .map_err(|e| {
            (
                ErrorCode::AuditFailed,
                format!("the audit record could not be written ({e:?}); operation refused"),
            )
        })
}

fn grant_json(g: &Grant) -> Value {
    json!({
        "grant_id": g.id,
        "name": g.name,
        "grantee": g.grantee.display(),
        "ops": g.ops.names(),
        "path_prefix": g.path_prefix,
        "created": gfmt::format_utc(g.created),
        "expires": g.expires.map(gfmt::format_utc),
        "created_by": g.created_by,
    })
}

fn grant_err(e: GrantStoreError) -> (ErrorCode, String) {
    let code = match &e {
        GrantStoreError::Grant(_) => ErrorCode::Invalid,
        GrantStoreError::NotFound(_) => ErrorCode::NotFound,
        GrantStoreError::NotGrantee => ErrorCode::Forbidden,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

fn grants_of(
    ctx: &ControlContext,
) -> Result<&Arc<crate::policy::grants::GrantStore>, (ErrorCode, String)> {
    ctx.policy
        .grant_store()
        .ok_or((ErrorCode::Invalid, "this mount has no grant store".into()))
}

/// Re-seals what is sealed under the primary version after a rotation
/// (grant store) and moves the audit log to a segment under it.
fn follow_rotation(ctx: &ControlContext) {
    if let Some(g) = ctx.policy.grant_store() {
        if let Err(e) = g.reseal() {
            tracing::warn!("cannot re-seal the grant store under the new key version: {e}");
        }
    }
    if let Some(a) = ctx.policy.audit_log() {
        if let Err(e) = a.follow_primary() {
            tracing::warn!("cannot start an audit segment under the new key version: {e}");
        }
    }
}

/// Records how ending a grant went: `ended` with the grant id on success,
/// `op` with `failure` as outcome and the reason otherwise.
fn record_grant_end(
    ctx: &ControlContext,
    peer: Peer,
    op: &str,
    ended: &str,
    failure: &str,
    r: Result<Grant, GrantStoreError>,
) -> Result<Grant, (ErrorCode, String)> {
    let event = match &r {
        Ok(g) => Event {
            grant: Some(&g.id),
            ..Event::ok(ended, None)
        },
        Err(e) => Event {
            outcome: failure,
            error: Some(e.to_string()),
            ..Event::ok(op, None)
        },
    };
    let _ = ctx.policy.record_principal(peer.principal(), event);
    r.map_err(grant_err)
}

fn handle_grant(ctx: &ControlContext, op: &Op, peer: Peer) -> Handled {
    let store = grants_of(ctx)?;
    match op {
        Op::GrantCreate {
            grantee,
            ops,
            path_prefix,
            expires,
            name,
        } => {
            let bad = |e: gfmt::GrantError| (ErrorCode::Invalid, e.to_string());
            let grantee = Grantee::parse(grantee).map_err(bad)?;
            let ops = OpSet::parse(ops).map_err(bad)?;
            gfmt::check_prefix(path_prefix).map_err(bad)?;
            let expires = expires
                .as_deref()
                .map(|e| gfmt::parse_expiry(e, now_secs()))
                .transpose()
                .map_err(bad)?;
            audit_control(
                ctx,
                peer,
                "grant_create",
                None,
                Some(format!(
                    "{} {} {}{}",
                    grantee.display(),
                    ops.names().join(","),
                    path_prefix,
                    expires
                        .map(|e| format!(" until {}", gfmt::format_utc(e)))
                        .unwrap_or_default()
                )),
            )?;
            let (g, token) = store
                .create(grantee, ops, path_prefix, expires, name.clone(), peer.uid)
                .map_err(grant_err)?;
            let _ = ctx.policy.record_principal(
                peer.principal(),
                Event {
                    grant: Some(&g.id),
                    ..Event::ok("grant_created", None)
                },
            );
            let mut v = grant_json(&g);
            v["grant_token"] = json!(token);
            Ok(v)
        }
        Op::GrantList {
            grantee,
            path_prefix,
        } => {
            let grantee = grantee
                .as_deref()
                .map(Grantee::parse)
                .transpose()
                .map_err(|e| (ErrorCode::Invalid, e.to_string()))?;
            let list = store.list(grantee, path_prefix.as_deref());
            Ok(json!({"grants": list.iter().map(grant_json).collect::<Vec<_>>()}))
        }
        Op::GrantRetire { token } => {
            let admin = peer.uid == 0 || peer.uid == ctx.owner_uid;
            let mut gids = read_proc(peer.pid).1;
            gids.push(peer.gid);
            audit_control(ctx, peer, "grant_retire", None, None)?;
            let r = store.retire(&token.0, peer.uid, &gids, admin);
            let g = record_grant_end(ctx, peer, "grant_retire", "grant_retired", "denied", r)?;
            ctx.cache.invalidate_file_data();
            Ok(json!({"retired": g.id}))
        }
        Op::GrantRevoke { grant_id } => {
            audit_control(ctx, peer, "grant_revoke", None, Some(grant_id.clone()))?;
            let r = store.revoke(grant_id);
            // Drop whatever the kernel cached, revoked or not stored.
            ctx.cache.invalidate_file_data();
            let g = record_grant_end(ctx, peer, "grant_revoke", "grant_revoked", "error", r)?;
            Ok(json!({"revoked": g.id}))
        }
        _ => Err((ErrorCode::Internal, "not a grant operation".into())),
    }
}

/// A time filter: an absolute UTC time/date, or a duration before now.
fn parse_time_filter(s: &str) -> Result<u64, (ErrorCode, String)> {
    let now = now_secs();
    if let Ok(d) = parse_duration(s) {
        return Ok(now.saturating_sub(d) * 1000);
    }
    gfmt::parse_expiry(s, now)
        .map(|t| t * 1000)
        .map_err(|e| (ErrorCode::Invalid, e.to_string()))
}

/// A filter over audit records (the `audit export` arguments).
pub struct AuditFilter {
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    principal: Option<(String, u32)>,
    path_prefix: Option<String>,
    op: Option<String>,
}

impl AuditFilter {
    /// Parses the filter arguments (as in the `audit_export` op).
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        principal: Option<&str>,
        path_prefix: Option<&str>,
        op: Option<&str>,
    ) -> Result<AuditFilter, String> {
        let principal = principal
            .map(|p| {
                let (k, n) = p
                    .split_once(':')
                    .ok_or_else(|| format!("principal '{p}' must be uid:N, gid:N or pid:N"))?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| format!("principal '{p}' must be uid:N, gid:N or pid:N"))?;
                match k {
                    "uid" | "gid" | "pid" => Ok((k.to_string(), n)),
                    _ => Err(format!("principal '{p}' must be uid:N, gid:N or pid:N")),
                }
            })
            .transpose()?;
        if let Some(p) = path_prefix {
            gfmt::check_prefix(p).map_err(|e| e.to_string())?;
        }
        Ok(AuditFilter {
            since_ms: since.map(parse_time_filter).transpose().map_err(|e| e.1)?,
            until_ms: until.map(parse_time_filter).transpose().map_err(|e| e.1)?,
            principal,
            path_prefix: path_prefix.map(str::to_string),
            op: op.map(str::to_string),
        })
    }

    /// Whether `r` passes.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms < t)
            && self.op.as_ref().is_none_or(|o| &r.op == o)
            && self
                .principal
                .as_ref()
                .is_none_or(|(k, n)| match k.as_str() {
                    "uid" => r.principal.uid == *n,
                    "gid" => r.principal.gid == *n,
                    _ => r.principal.pid == *n,
                })
            && self.path_prefix.as_ref().is_none_or(|p| {
                r.path
                    .as_ref()
                    .is_some_and(|x| gfmt::is_within(x.as_bytes(), p.as_bytes()))
            })
    }
}

/// One audit record as exported (JSON line).
pub fn record_json(r: &AuditRecord) -> Value {
    let mut v = json!(r);
    v["time"] = json!(format!(
        "{}.{:03}Z",
        gfmt::format_utc(r.time_ms / 1000).trim_end_matches('Z'),
        r.time_ms % 1000
    ));
    v
}

fn export_audit(ctx: &ControlContext, op: &Op, out: &mut dyn Write) -> Handled {
    let Op::AuditExport {
        since,
        until,
        principal,
        path_prefix,
        operation,
    } = op
    else {
        return Err((ErrorCode::Internal, "not an export".into()));
    };
    let filter = AuditFilter::parse(
        since.as_deref(),
        until.as_deref(),
        principal.as_deref(),
        path_prefix.as_deref(),
        operation.as_deref(),
    )
    .map_err(|e| (ErrorCode::Invalid, e))?;
    if let Some(a) = ctx.policy.audit_log() {
        let _ = a.sync();
    }
    let mut n = 0u64;
    let mut write_err = None;
    let report = verify_log(&ctx.vol, &mut |r| {
        if write_err.is_none() && filter.matches(r) {
            if let Err(e) = writeln!(out, "{}", json!({"record": record_json(r)})) {
                write_err = Some(e);
            }
            n += 1;
        }
    })
    .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    if let Some(e) = write_err {
        return Err((ErrorCode::Internal, e.to_string()));
    }
    Ok(json!({"exported": n, "verify": report}))
}

fn handle(ctx: &ControlContext, req: &Request, peer: Peer) -> Handled {
    let vol = &ctx.vol;
    match &req.op {
        Op::Status => Ok(status(ctx)),
        Op::GrantCreate { .. }
        | Op::GrantList { .. }
        | Op::GrantRetire { .. }
        | Op::GrantRevoke { .. } => handle_grant(ctx, &req.op, peer),
        Op::AuditExport { .. } => Err((ErrorCode::Invalid, "audit_export streams".into())),
        Op::AuditVerify => {
            if let Some(a) = ctx.policy.audit_log() {
                let _ = a.sync();
            }
            let report =
                verify_log(vol, &mut |_| {}).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            Ok(json!(report))
        }
        Op::Metrics => Ok(json!({"text": render_metrics(vol)})),
        Op::Rotate => {
            audit_control(ctx, peer, "rotate", None, None)?;
            let v = vol.update_keyring(|k| k.rotate()).map_err(vol_err)?;
            tracing::info!("key rotated: version {v} is primary");
            follow_rotation(ctx);
            Ok(json!({"primary": v}))
        }
        Op::Rewrap => {
            if vol.read_only() {
                return Err((ErrorCode::ReadOnly, "read-only mount".into()));
            }
            if ctx.rewrap.running.load(Ordering::Acquire) {
                return Err((ErrorCode::Busy, "a rewrap is already running".into()));
            }
            let primary = vol.keyring().read().primary();
            audit_control(ctx, peer, "rewrap", Some(primary), None)?;
            if ctx.rewrap.running.swap(true, Ordering::AcqRel) {
                return Err((ErrorCode::Busy, "a rewrap is already running".into()));
            }
            ctx.rewrap.reset();
            let primary = vol.keyring().read().primary();
            let vol = vol.clone();
            let progress = ctx.rewrap.clone();
            std::thread::Builder::new()
                .name("sealfs-rewrap".into())
                .spawn(move || {
                    if let Err(e) = vol.rewrap_all(&progress) {
                        tracing::warn!("rewrap failed: {e}");
                        progress.running.store(false, Ordering::Release);
                    }
                })
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            Ok(json!({"started": true, "primary": primary}))
        }
        Op::Census => Ok(json!(run_census(ctx)?)),
        Op::Fsck => {
            let progress = crate::volume::fsck::FsckProgress::default();
            let report = vol.check_live(&progress).map_err(vol_err)?;
            Ok(json!(report))
        }
        Op::Disable => {
            audit_control(ctx, peer, "disable", None, None)?;
            // Write back and drop cached pages first (while writes still work),
            // then refuse every further key use.
            ctx.cache.invalidate_file_data();
            vol.update_keyring(|k| {
                k.set_disabled(true);
                Ok(())
            })
            .map_err(vol_err)?;
            ctx.cache.invalidate_file_data();
            Ok(json!({"disabled": true}))
        }
        Op::Enable => {
            audit_control(ctx, peer, "enable", None, None)?;
            vol.update_keyring(|k| {
                k.set_disabled(false);
                Ok(())
            })
            .map_err(vol_err)?;
            Ok(json!({"disabled": false}))
        }
        Op::SetRotationPeriod { period } => {
            let period = period.clone().filter(|p| p != "off");
            if let Some(p) = &period {
                parse_duration(p).map_err(|e| (ErrorCode::Invalid, e))?;
            }
            audit_control(
                ctx,
                peer,
                "set_rotation_period",
                None,
                Some(period.clone().unwrap_or_else(|| "off".into())),
            )?;
            vol.set_rotation_period(period).map_err(vol_err)?;
            Ok(
                json!({"rotation_period": vol.config().rotation_period, "next_rotation": vol.next_rotation()}),
            )
        }
        Op::Trim { min_version, force } => {
            // Like Vault's min_decryption_version, but checked first: a header
            // still under a retired version stops opening, so that takes
            // `force`. Directory records (the root's above all) are re-wrapped
            // first in any case: a retired version must never cut off the
            // namespace, or the volume would not even mount for an untrim.
            let primary = vol.keyring().read().primary();
            if *min_version > primary {
                return Err((
                    ErrorCode::Invalid,
                    format!("cannot retire the primary version {primary} (minimum {min_version} is above it)"),
                ));
            }
            if vol.read_only() {
                return Err((ErrorCode::ReadOnly, "read-only mount".into()));
            }
            let (dirs_rewrapped, dirs_failed) = vol.rewrap_dir_records().map_err(vol_err)?;
            if dirs_failed > 0 {
                return Err((
                    ErrorCode::Invalid,
                    format!("{dirs_failed} directory records could not be re-wrapped to the primary version; nothing retired"),
                ));
            }
            let census = run_census(ctx)?;
            let still: u64 = census
                .files
                .iter()
                .chain(census.dirs.iter())
                .chain(census.unreadable_by_version.iter())
                .filter(|(v, _)| **v < *min_version)
                .map(|(_, n)| *n)
                .sum();
            if still > 0 && !force {
                return Err((
                    ErrorCode::Invalid,
                    format!("{still} headers still use versions below {min_version}; run rewrap first (or force)"),
                ));
            }
            audit_control(
                ctx,
                peer,
                "retire_key_versions",
                None,
                Some(format!("below {min_version}")),
            )?;
            let retired = vol
                .update_keyring(|k| k.retire_below(*min_version))
                .map_err(vol_err)?;
            Ok(
                json!({"retired": retired, "directory_records_rewrapped": dirs_rewrapped, "headers_left_unreadable": still}),
            )
        }
        Op::Untrim { version } => {
            audit_control(ctx, peer, "enable_key_version", Some(*version), None)?;
            vol.update_keyring(|k| k.unretire(*version))
                .map_err(vol_err)?;
            Ok(json!({"enabled": version}))
        }
        Op::ScheduleDeletion {
            version,
            wait,
            confirm,
        } => {
            let wait = wait.clone().unwrap_or_else(|| "7d".into());
            let secs = parse_duration(&wait).map_err(|e| (ErrorCode::Invalid, e))?;
            let due = now_secs().checked_add(secs).ok_or_else(|| {
                (
                    ErrorCode::Invalid,
                    format!("waiting period {wait} is too long"),
                )
            })?;
            let state = vol
                .keyring()
                .read()
                .versions()
                .iter()
                .find(|v| v.version == *version)
                .map(|v| v.state);
            match state {
                None => return Err((ErrorCode::Invalid, format!("no key version {version}"))),
                Some(KeyState::Retired) => {}
                Some(_) => {
                    return Err((
                        ErrorCode::Invalid,
                        format!(
                        "version {version} must be retired (trim) before its deletion is scheduled"
                    ),
                    ))
                }
            }
            let census = run_census(ctx)?;
            let orphans = census.files.get(version).copied().unwrap_or(0)
                + census.dirs.get(version).copied().unwrap_or(0)
                + census
                    .unreadable_by_version
                    .get(version)
                    .copied()
                    .unwrap_or(0);
            if !confirm {
                return Ok(
                    json!({"version": version, "would_orphan": orphans, "confirmed": false}),
                );
            }
            audit_control(
                ctx,
                peer,
                "schedule_key_deletion",
                Some(*version),
                Some(format!("due {}", gfmt::format_utc(due))),
            )?;
            vol.update_keyring(|k| k.schedule_deletion(*version, due))
                .map_err(vol_err)?;
            Ok(
                json!({"version": version, "deletion_due": due, "would_orphan": orphans, "confirmed": true}),
            )
        }
        Op::CancelDeletion { version } => {
            audit_control(ctx, peer, "cancel_key_deletion", Some(*version), None)?;
            vol.update_keyring(|k| k.cancel_deletion(*version))
                .map_err(vol_err)?;
            Ok(json!({"version": version, "state": "retired"}))
        }
    }
}

/// Ends grants when their expiry passes (at most a second late; handles
/// check the expiry themselves on every use, so this only records the end,
/// stores it, and drops cached data).
pub fn spawn_grant_expiry(ctx: &Arc<ControlContext>) {
    let weak = Arc::downgrade(ctx);
    let _ = std::thread::Builder::new()
        .name("sealfs-grants".into())
        .spawn(move || loop {
            let Some(ctx) = weak.upgrade() else { return };
            if let Some(store) = ctx.policy.grant_store() {
                let expired = store.expire_due(now_secs());
                for g in &expired {
                    let _ = ctx.policy.record_principal(
                        crate::policy::audit::AuditLog::daemon_record().principal,
                        Event {
                            grant: Some(&g.id),
                            ..Event::ok("grant_expired", None)
                        },
                    );
                }
                if !expired.is_empty() {
                    ctx.cache.invalidate_file_data();
                }
            }
            drop(ctx);
            std::thread::sleep(Duration::from_millis(500));
        });
}

/// Runs due schedules (automatic rotation, key destruction) now and then
/// every few seconds, for as long as `ctx` lives.
pub fn spawn_scheduler(ctx: &Arc<ControlContext>) {
    let weak = Arc::downgrade(ctx);
    let _ = std::thread::Builder::new()
        .name("sealfs-schedule".into())
        .spawn(move || loop {
            let Some(ctx) = weak.upgrade() else { return };
            match ctx.vol.run_schedules(now_secs()) {
                Ok(done) => {
                    for d in done {
                        tracing::info!("schedule: {d}");
                    }
                }
                Err(e) => tracing::warn!("scheduled key job failed: {e}"),
            }
            drop(ctx);
            std::thread::sleep(SCHEDULE_TICK);
        });
}
