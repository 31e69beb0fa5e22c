//! The control plane: a Unix socket per mount serving the protocol of
//! [`protocol`] (docs/CONTROL.md), and the client side for `sealfs ctl`.
//!
//! Rooms: [`protocol`] (the typed requests and results, pure), `server`
//! (accepting, peer checks, limits, threads), [`socket`] (the socket file,
//! its directory, both ends' credentials), `handlers` (what each
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
mod key_handlers;
pub mod protocol;
mod server;
pub mod socket;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::format::config::hex;
use crate::kms::MountHooks;
use crate::policy::AccessControl;
use crate::volume::walk::{Census, RewrapProgress};
use crate::volume::Volume;
pub use server::{serve, serve_with, ControlServer, Limits};

/// The default socket path of the mount at `mountpoint` (canonical path):
/// `/run/sealfs/` for root, `$XDG_RUNTIME_DIR/sealfs/` (or
/// `/tmp/sealfs-UID/`) otherwise, named after a hash of the mount point.
pub fn default_socket_path(mountpoint: &Path) -> PathBuf {
    let h = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    let name = format!("mnt-{}.sock", &hex(&h)[..16]);
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    socket::default_socket_dir(uid).join(name)
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
