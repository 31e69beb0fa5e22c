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

use crate::format::config::{hex, parse_duration};
use crate::format::keyring::KeyState;
use crate::fs::CacheControl;
use crate::keyring::now_secs;
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
}

impl ControlContext {
    /// A context for the mount of `vol` at `mountpoint`, administered by `owner_uid` and root.
    pub fn new(
        vol: Arc<Volume>,
        cache: CacheControl,
        mountpoint: PathBuf,
        owner_uid: u32,
    ) -> Arc<Self> {
        Arc::new(ControlContext {
            vol,
            cache,
            rewrap: Arc::new(RewrapProgress::default()),
            census: Mutex::new(None),
            mountpoint,
            owner_uid,
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

fn peer_uid(s: &UnixStream) -> Option<u32> {
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
    (r == 0).then_some(cred.uid)
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
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
    let uid = peer_uid(&stream);
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
        let reply = match parse_request(&line) {
            Err(e) => error_line(&e.id, e.code, &e.message),
            Ok(req) => match uid {
                Some(u) if u == 0 || u == ctx.owner_uid => match handle(ctx, &req) {
                    Ok(v) => ok_line(&req.id, v),
                    Err((code, msg)) => error_line(&req.id, code, &msg),
                },
                _ => {
                    crate::metrics::denied(crate::metrics::Denial::ControlPeer);
                    error_line(
                        &req.id,
                        ErrorCode::Forbidden,
                        "only the mount owner and root may use this socket",
                    )
                }
            },
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
    })
}

fn run_census(ctx: &ControlContext) -> Result<Census, (ErrorCode, String)> {
    let c = ctx.vol.census().map_err(vol_err)?;
    *ctx.census.lock() = Some(c.clone());
    Ok(c)
}

fn handle(ctx: &ControlContext, req: &Request) -> Handled {
    let vol = &ctx.vol;
    match &req.op {
        Op::Status => Ok(status(ctx)),
        Op::Metrics => Ok(json!({"text": crate::metrics::render_volume(vol)})),
        Op::Rotate => {
            let v = vol.update_keyring(|k| k.rotate()).map_err(vol_err)?;
            tracing::info!("key rotated: version {v} is primary");
            Ok(json!({"primary": v}))
        }
        Op::Rewrap => {
            if vol.read_only() {
                return Err((ErrorCode::ReadOnly, "read-only mount".into()));
            }
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
            let retired = vol
                .update_keyring(|k| k.retire_below(*min_version))
                .map_err(vol_err)?;
            Ok(
                json!({"retired": retired, "directory_records_rewrapped": dirs_rewrapped, "headers_left_unreadable": still}),
            )
        }
        Op::Untrim { version } => {
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
            vol.update_keyring(|k| k.schedule_deletion(*version, due))
                .map_err(vol_err)?;
            Ok(
                json!({"version": version, "deletion_due": due, "would_orphan": orphans, "confirmed": true}),
            )
        }
        Op::CancelDeletion { version } => {
            vol.update_keyring(|k| k.cancel_deletion(*version))
                .map_err(vol_err)?;
            Ok(json!({"version": version, "state": "retired"}))
        }
    }
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
