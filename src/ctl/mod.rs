//! The control plane: a Unix socket per mount serving the protocol of
//! [`protocol`] (docs/CONTROL.md), and the client side for `sealfs ctl`.
//!
//! Rooms: [`protocol`] (the typed requests and results, pure), `server`
//! (the socket, peer checks, limits, threads), `handlers` (what each
//! request does: key operations through [`crate::kms::KeyService`],
//! grants, audit, fsck, status), [`client`] (`call::<Result>()`).
//!
//! Owns: one mount's control context and its socket path.
//! Must never: block file I/O (nothing here takes a file lock; long jobs
//! run on their own thread), hold a key-policy rule (that is
//! [`crate::kms`]), import the FUSE layer (the mount hands in its
//! [`MountHooks`]), or put key material in a response.

pub mod client;
mod handlers;
pub mod protocol;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::format::config::hex;
use crate::keyring::now_secs;
use crate::kms::{KeyService, MountHooks};
use crate::policy::{AccessControl, Event};
use crate::volume::walk::{Census, RewrapProgress};
use crate::volume::Volume;
pub use server::{serve, ControlServer};

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

/// Everything a request handler may touch: one mount.
pub struct ControlContext {
    vol: Arc<Volume>,
    hooks: Arc<dyn MountHooks>,
    rewrap: Arc<RewrapProgress>,
    census: Mutex<Option<Census>>,
    mountpoint: PathBuf,
    owner_uid: u32,
    access: Arc<AccessControl>,
    /// Socket mode 0666 (with allow_other) so grantees can retire their grants.
    shared_socket: bool,
}

impl ControlContext {
    /// A context for the mount of `vol` at `mountpoint`, administered by `owner_uid` and root.
    /// `access` holds the grants and audit log the frontend uses; with
    /// `shared_socket` (mounts with allow_other) any local user may connect,
    /// though only to retire their own grants.
    pub fn new(
        vol: Arc<Volume>,
        hooks: Arc<dyn MountHooks>,
        mountpoint: PathBuf,
        owner_uid: u32,
        access: Arc<AccessControl>,
        shared_socket: bool,
    ) -> Arc<Self> {
        Arc::new(ControlContext {
            vol,
            hooks,
            rewrap: Arc::new(RewrapProgress::default()),
            census: Mutex::new(None),
            mountpoint,
            owner_uid,
            access,
            shared_socket,
        })
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
            if let Some(store) = ctx.access.grant_store() {
                let expired = store.expire_due(now_secs());
                for g in &expired {
                    let _ = ctx.access.record_principal(
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
