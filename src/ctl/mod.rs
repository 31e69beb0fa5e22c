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
use crate::keyring::now_secs;
use crate::kms::{self, KeyError, KeyService, MountHooks, OnMount};
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
    hooks: Arc<dyn MountHooks>,
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
        hooks: Arc<dyn MountHooks>,
        mountpoint: PathBuf,
        owner_uid: u32,
        policy: Arc<AccessControl>,
        shared_socket: bool,
    ) -> Arc<Self> {
        Arc::new(ControlContext {
            vol,
            hooks,
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
    (vol_err_ref(&e), e.to_string())
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
    let keys = KeyService::offline(&ctx.vol).status();
    let versions: Vec<Value> = keys
        .versions
        .iter()
        .map(|v| {
            let mut o = json!({
                "version": v.version,
                "state": state_name(v.state),
                "created": v.created,
                "primary": v.primary,
            });
            if let Some(due) = v.deletion_due {
                o["deletion_due"] = json!(due);
            }
            if let Some(c) = &census {
                o["files"] = json!(c.files.get(&v.version).copied().unwrap_or(0));
                o["dirs"] = json!(c.dirs.get(&v.version).copied().unwrap_or(0));
            }
            o
        })
        .collect();
    json!({
        "volume_id": cfg.volume_id,
        "format_version": cfg.format_version,
        "cipherdir": std::fs::canonicalize(ctx.vol.cipherdir()).unwrap_or_else(|_| ctx.vol.cipherdir().to_path_buf()),
        "mountpoint": ctx.mountpoint,
        "read_only": ctx.vol.read_only(),
        "disabled": keys.disabled,
        "primary": keys.primary,
        "versions": versions,
        "rotation_period": keys.rotation_period,
        "next_rotation": keys.next_rotation,
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
            ctx.hooks.drop_cached_file_data();
            Ok(json!({"retired": g.id}))
        }
        Op::GrantRevoke { grant_id } => {
            audit_control(ctx, peer, "grant_revoke", None, Some(grant_id.clone()))?;
            let r = store.revoke(grant_id);
            // Drop whatever the kernel cached, revoked or not stored.
            ctx.hooks.drop_cached_file_data();
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

fn key_err(e: KeyError) -> (ErrorCode, String) {
    let code = match &e {
        KeyError::Invalid(_) => ErrorCode::Invalid,
        KeyError::ReadOnlyMount => ErrorCode::ReadOnly,
        KeyError::Busy(_) => ErrorCode::Busy,
        KeyError::AuditFailed(_) => ErrorCode::AuditFailed,
        KeyError::Volume(v) => vol_err_ref(v),
    };
    (code, e.to_string())
}

fn vol_err_ref(e: &VolumeError) -> ErrorCode {
    match e {
        VolumeError::ReadOnly => ErrorCode::ReadOnly,
        VolumeError::Keyring(crate::keyring::KeyringError::Lifecycle(_))
        | VolumeError::Config(_) => ErrorCode::Invalid,
        _ => ErrorCode::Internal,
    }
}

/// The key service for a request by `peer`.
fn keys<'a>(ctx: &'a ControlContext, peer: Peer) -> KeyService<'a> {
    KeyService::on_mount(
        &ctx.vol,
        OnMount {
            access: &ctx.policy,
            actor: peer.principal(),
            hooks: &*ctx.hooks,
            last_census: &ctx.census,
        },
    )
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
            let v = keys(ctx, peer).rotate().map_err(key_err)?;
            Ok(json!({"primary": v}))
        }
        Op::Rewrap => {
            let primary = keys(ctx, peer).begin_rewrap(&ctx.rewrap).map_err(key_err)?;
            kms::spawn_rewrap(vol.clone(), ctx.rewrap.clone())
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            Ok(json!({"started": true, "primary": primary}))
        }
        Op::Census => Ok(json!(keys(ctx, peer).census().map_err(key_err)?)),
        Op::Fsck => {
            let progress = crate::volume::fsck::FsckProgress::default();
            let report = vol.check_live(&progress).map_err(vol_err)?;
            Ok(json!(report))
        }
        Op::Disable => {
            keys(ctx, peer).disable().map_err(key_err)?;
            Ok(json!({"disabled": true}))
        }
        Op::Enable => {
            keys(ctx, peer).enable().map_err(key_err)?;
            Ok(json!({"disabled": false}))
        }
        Op::SetRotationPeriod { period } => {
            let s = keys(ctx, peer)
                .set_rotation_period(period.as_deref())
                .map_err(key_err)?;
            Ok(json!({"rotation_period": s.rotation_period, "next_rotation": s.next_rotation}))
        }
        Op::Trim { min_version, force } => {
            let t = keys(ctx, peer)
                .trim(*min_version, *force)
                .map_err(key_err)?;
            Ok(
                json!({"retired": t.retired, "directory_records_rewrapped": t.directory_records_rewrapped, "headers_left_unreadable": t.headers_left_unreadable}),
            )
        }
        Op::Untrim { version } => {
            keys(ctx, peer).untrim(*version).map_err(key_err)?;
            Ok(json!({"enabled": version}))
        }
        Op::ScheduleDeletion {
            version,
            wait,
            confirm,
        } => {
            let p = keys(ctx, peer)
                .schedule_deletion(*version, wait.as_deref(), *confirm)
                .map_err(key_err)?;
            Ok(match p.deletion_due {
                None => {
                    json!({"version": p.version, "would_orphan": p.would_orphan, "confirmed": false})
                }
                Some(due) => {
                    json!({"version": p.version, "deletion_due": due, "would_orphan": p.would_orphan, "confirmed": true})
                }
            })
        }
        Op::CancelDeletion { version } => {
            keys(ctx, peer).cancel_deletion(*version).map_err(key_err)?;
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
                    ctx.hooks.drop_cached_file_data();
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
            match KeyService::offline(&ctx.vol).run_schedules(now_secs()) {
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
