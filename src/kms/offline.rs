//! Key policy on an unmounted volume that has an audit log: the command
//! line's key changes (rotate, passwd, keyslot add/remove/rewrap, upgrade)
//! are recorded in the volume's log like a mount's, so the rollback anchor
//! sees every keyring change.
//!
//! Owns: opening the log for one offline command, on behalf of the user
//! who runs it.
//! Must never: create a log for a volume that never had one (its first
//! mount does).

use std::sync::Arc;

use parking_lot::Mutex;

use super::{KeyError, KeyService, MountHooks, OnMount};
use crate::policy::audit::{AuditLog, AUDIT_DIR, DEFAULT_SEGMENT_BYTES};
use crate::policy::AccessControl;
use crate::volume::walk::Census;
use crate::volume::Volume;

struct NoMount;

impl MountHooks for NoMount {
    fn drop_cached_file_data(&self) {}
}

/// An unmounted volume's audit log, opened for key changes.
pub struct OfflineAudit {
    access: AccessControl,
    census: Mutex<Option<Census>>,
}

impl OfflineAudit {
    /// Opens `vol`'s audit log, if it has one (`None` otherwise).
    pub fn open(vol: &Arc<Volume>) -> Result<Option<Self>, KeyError> {
        if vol.read_only()
            || crate::sys::fstatat(vol.root(), std::ffi::OsStr::new(AUDIT_DIR)).is_err()
        {
            return Ok(None);
        }
        let log = AuditLog::open(vol.clone(), DEFAULT_SEGMENT_BYTES)
            .map_err(|e| KeyError::AuditFailed(format!("cannot open the audit log: {e}")))?;
        // SAFETY: geteuid has no failure mode.
        let uid = unsafe { libc::geteuid() };
        Ok(Some(OfflineAudit {
            access: AccessControl::new(uid, None, Some(log)),
            census: Mutex::new(None),
        }))
    }

    /// Key policy over `vol`, recorded in this log on behalf of the user
    /// running the command.
    pub fn keys<'a>(&'a self, vol: &'a Volume) -> KeyService<'a> {
        KeyService::on_mount(
            vol,
            OnMount {
                access: &self.access,
                actor: AuditLog::daemon_record().principal,
                hooks: &NoMount,
                last_census: &self.census,
            },
        )
    }
}
