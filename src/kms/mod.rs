//! Key policy: the one place that decides what may happen to a volume's
//! master key versions, and in which order (KMS RotateKey, DisableKey,
//! ScheduleKeyDeletion, …). The control socket's handlers, the offline
//! command line and the library ([`crate::Vault`]) all call [`KeyService`],
//! so a rule written here holds everywhere.
//!
//! Vocabulary. *Trim* retires every enabled version below the *minimum
//! decryption version* (`min_version`); *untrim* re-enables one retired
//! version. A retired version can be *scheduled for deletion* after a
//! waiting period (and the deletion *cancelled* until then); the schedule
//! destroys it when due. *Disable* refuses all file I/O until *enable*.
//!
//! Every keyring change goes through one sequence ([`KeyService`]'s
//! `change`): checks, the change applied to a copy, the audit record
//! naming the keyring generation it makes (fail-closed), the store with the
//! audit log's head as the rollback anchor, a `keyring_stored` record, and
//! the generation recorded in the KMS when a KMS slot unlocked the volume.
//!
//! Rooms: [`anchor`] (the rollback checks at open: the keyring against the
//! audit log and the KMS), [`keyslots`] (adding, removing and re-wrapping
//! keyslots; the upgrade of a layout-1 keyring).
//!
//! Owns: the lifecycle rules and their order (then what follows a change:
//! the grant store re-sealed and the audit log moved to a segment under a
//! new primary, the kernel's cached pages dropped on disable), the rotation
//! period (in the keyring; in `sealfs.toml` for a layout-1 keyring), the
//! schedules (automatic rotation, destruction of due versions, both
//! audited), and the census a trim or a deletion needs.
//! Must never: touch the keyring or config except through
//! [`Volume::update_keyring_with`] / [`Volume::update_config`] (durable
//! before current), change anything whose audit record could not be written
//! (fail-closed), know about FUSE or the socket (a mount hands in its
//! [`MountHooks`]), call a KMS on the I/O path, or put key material in a
//! result or an error.

pub mod anchor;
pub mod keyslots;
mod named;
mod offline;
pub mod retention;

pub use named::{key_label, KeyInfo, KeySpec};
pub use offline::OfflineAudit;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::crypto::Argon2Params;
use crate::format::audit::{AuditRecord, Principal};
use crate::format::config::{parse_duration, parse_duration_with_unit};
use crate::format::grants::format_utc;
use crate::format::keyring::KeyState;
use crate::keyring::{now_secs, Keyring, KeyringError, UnlockSecret};
use crate::policy::audit::AuditLog;
use crate::policy::{AccessControl, Event};
use crate::volume::rewrap::RewrapTo;
use crate::volume::walk::{Census, RewrapProgress, RewrapReport};
use crate::volume::{Volume, VolumeError};

/// The waiting period of a deletion when none is given.
pub const DEFAULT_DELETION_WAIT: &str = "7d";

/// The shortest automatic rotation period accepted without `allow_short`:
/// a new master key version more often than daily only grows the keyring.
pub const MIN_ROTATION_PERIOD_SECS: u64 = 86_400;

/// What a mount does when key policy changes under it. The FUSE layer
/// implements it (the daemon wires it up); key policy never sees FUSE.
pub trait MountHooks: Send + Sync {
    /// Writes back and drops the kernel's cached data of every open or
    /// known file, so the next read reaches the daemon (and its checks).
    fn drop_cached_file_data(&self);
}

/// Errors of [`KeyService`]. Messages are the control protocol's (docs/CONTROL.md §5).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Arguments or the key state do not allow it (a lifecycle rule).
    #[error("{0}")]
    Invalid(String),
    /// A change was asked of a read-only mount.
    #[error("read-only mount")]
    ReadOnlyMount,
    /// Something is already running (a rewrap).
    #[error("{0}")]
    Busy(String),
    /// The audit record of the operation could not be written, so it was not done.
    #[error("the audit record could not be written ({0}); operation refused")]
    AuditFailed(String),
    /// The volume layer failed (a lifecycle refusal of the keyring, I/O, …).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The keyring is older than the audit log or the KMS says it should be
    /// (restored from a copy), or the audit log lost what the keyring saw.
    #[error("rollback detected: {0}; if this is expected (you restored a backup on purpose), open with --accept-rollback (recorded in the audit log)")]
    Rollback(String),
    /// The KMS a keyslot depends on refused or could not be reached.
    #[error("{0}")]
    Kms(#[from] crate::keyring::ProviderError),
}

impl From<KeyringError> for KeyError {
    fn from(e: KeyringError) -> Self {
        KeyError::Volume(VolumeError::Keyring(e))
    }
}

/// One master key version, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Whether new data keys are wrapped under it.
    pub primary: bool,
    /// When a `PendingDeletion` version is destroyed (seconds since the epoch).
    pub deletion_due: Option<u64>,
}

/// The key state of a volume ([`KeyService::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The version that wraps new keys.
    pub primary: u32,
    /// All file I/O is refused.
    pub disabled: bool,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
    /// Automatic rotation period ("90d"), if on.
    pub rotation_period: Option<String>,
    /// When the next automatic rotation is due, if on.
    pub next_rotation: Option<u64>,
}

/// The rotation schedule after [`KeyService::set_rotation_period`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationSchedule {
    /// The period, if automatic rotation is on.
    pub rotation_period: Option<String>,
    /// When the next rotation is due, if on.
    pub next_rotation: Option<u64>,
}

/// What [`KeyService::trim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// The versions this call retired (empty if none were enabled below the minimum).
    pub retired: Vec<u32>,
    /// Directory records re-wrapped to the primary version first.
    pub directory_records_rewrapped: u64,
    /// Headers a forced trim left under a retired version (unreadable until untrim).
    pub headers_left_unreadable: u64,
}

/// What [`KeyService::schedule_deletion`] found, and did when confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionPlan {
    /// The version.
    pub version: u32,
    /// Headers and directory records that open (or would) only under it.
    pub would_orphan: u64,
    /// When it will be destroyed: only when confirmed.
    pub deletion_due: Option<u64>,
    /// Whether the deletion was scheduled (false: a dry run).
    pub confirmed: bool,
}

/// What runs a key operation on a mount brings along: who asks (their
/// audit principal), the mount's access control (audit log, grant store),
/// its [`MountHooks`], and where the last census is kept for `status`.
pub struct OnMount<'a> {
    /// The mount's grants and audit log.
    pub access: &'a AccessControl,
    /// Who asks (recorded with every change).
    pub actor: Principal,
    /// What the mount does when policy changes (cache invalidation).
    pub hooks: &'a dyn MountHooks,
    /// The last census of this mount, updated by every census run here.
    pub last_census: &'a Mutex<Option<Census>>,
}

/// Key policy over one volume. See the [module docs](self).
///
/// Offline (the command line on an unmounted volume, the library) with no
/// audit log to keep in step: [`KeyService::offline`]; offline with the
/// volume's log: [`KeyService::on_mount`] with an [`OfflineAudit`]'s
/// parts. On a mount, [`KeyService::on_mount`] records every change in the
/// audit log first and re-seals what a rotation concerns.
pub struct KeyService<'a> {
    vol: &'a Volume,
    mount: Option<OnMount<'a>>,
}

impl<'a> KeyService<'a> {
    /// Key policy over an unmounted volume (nothing is audited: the audit
    /// log records what happens through a mount).
    pub fn offline(vol: &'a Volume) -> Self {
        KeyService { vol, mount: None }
    }

    /// Key policy over a mounted volume, on behalf of `mount.actor`.
    pub fn on_mount(vol: &'a Volume, mount: OnMount<'a>) -> Self {
        KeyService {
            vol,
            mount: Some(mount),
        }
    }

    /// The audit log changes are recorded in, if any.
    fn log(&self) -> Option<&Arc<AuditLog>> {
        self.mount.as_ref().and_then(|m| m.access.audit_log())
    }

    /// Who asks (for records written here).
    fn actor(&self) -> Principal {
        self.mount
            .as_ref()
            .map_or_else(|| AuditLog::daemon_record().principal, |m| m.actor.clone())
    }

    /// Appends one record about the keyring.
    fn record(
        &self,
        log: &AuditLog,
        op: &str,
        key_version: Option<u32>,
        detail: Option<String>,
        generation: Option<u32>,
    ) -> Result<(), KeyError> {
        log.append(AuditRecord {
            op: op.to_string(),
            key_version,
            detail,
            keyring_generation: generation.map(u64::from),
            principal: self.actor(),
            ..AuditLog::daemon_record()
        })
        .map(drop)
        .map_err(|e| KeyError::AuditFailed(e.to_string()))
    }

    /// The one sequence every keyring change follows (module docs): apply
    /// `change` to a copy, record `op` with the generation it makes
    /// (fail-closed), store with the log's head as anchor, record the
    /// store, tell the KMS. Returns what `change` returned.
    pub(crate) fn change<T>(
        &self,
        op: &str,
        key_version: Option<u32>,
        detail: Option<String>,
        change: impl FnOnce(&mut Keyring) -> Result<T, KeyringError>,
    ) -> Result<T, KeyError> {
        let _op = crate::keyring::ChangeInProgress::start(op);
        let log = self.log();
        let (out, generation) = self.vol.update_keyring_with(change, |next| {
            let Some(log) = log else { return Ok(None) };
            self.record(log, op, key_version, detail, Some(next))
                .map_err(|e| KeyringError::AuditRefused(e.to_string()))?;
            // The anchor must point at records that survive a power loss.
            log.sync()
                .map_err(|e| KeyringError::AuditRefused(e.to_string()))?;
            crate::keyring::kill_point("keyring-change-recorded");
            Ok(Some((log.stream().name(), log.head().into())))
        })?;
        if let Some(log) = log {
            if let Err(e) = self.record(log, "keyring_stored", None, None, Some(generation)) {
                tracing::warn!("keyring generation {generation} stored, but not recorded: {e}");
            }
        }
        anchor::record_in_kms(self.vol, generation);
        Ok(out)
    }

    /// Records `op` before it runs (fail-closed: no record, no operation).
    fn audit(
        &self,
        op: &str,
        key_version: Option<u32>,
        detail: Option<String>,
    ) -> Result<(), KeyError> {
        let Some(m) = &self.mount else { return Ok(()) };
        m.access
            .record_principal(
                m.actor.clone(),
                Event {
                    key_version,
                    detail,
                    ..Event::ok(op, None)
                },
            )
            .map_err(|e| KeyError::AuditFailed(format!("{e:?}")))
    }

    fn drop_cached_file_data(&self) {
        if let Some(m) = &self.mount {
            m.hooks.drop_cached_file_data();
        }
    }

    /// Re-seals what is sealed under the primary version after a rotation
    /// (grant store) and moves the audit log to a segment under it.
    fn follow_rotation(&self) {
        let Some(m) = &self.mount else { return };
        if let Some(g) = m.access.grant_store() {
            if let Err(e) = g.reseal() {
                tracing::warn!("cannot re-seal the grant store under the new key version: {e}");
            }
        }
        if let Some(a) = m.access.audit_log() {
            if let Err(e) = a.follow_primary() {
                tracing::warn!("cannot start an audit segment under the new key version: {e}");
            }
        }
    }

    /// The primary version, every version's state, and the rotation schedule.
    pub fn status(&self) -> KeyStatus {
        let rotation_period = self.rotation_period();
        let kr = self.vol.keyring().read();
        let versions = kr
            .versions()
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                state: v.state,
                created: v.created,
                primary: v.version == kr.primary(),
                deletion_due: (v.state == KeyState::PendingDeletion).then_some(v.deletion_due),
            })
            .collect();
        let primary = kr.primary();
        drop(kr);
        KeyStatus {
            primary,
            disabled: self.vol.is_disabled(),
            versions,
            rotation_period,
            next_rotation: self.next_rotation(),
        }
    }

    /// The automatic rotation period: in the keyring (layout 2), or in
    /// `sealfs.toml` (layout 1).
    pub fn rotation_period(&self) -> Option<String> {
        let kr = self.vol.keyring().read();
        if kr.layout() == 2 {
            kr.rotation_period()
        } else {
            self.vol.config().rotation_period
        }
    }

    /// Counts the headers and directory records under each version (a full
    /// scan); on a mount the result is kept for `status`.
    pub fn census(&self) -> Result<Census, KeyError> {
        let c = self.vol.census()?;
        if let Some(m) = &self.mount {
            *m.last_census.lock() = Some(c.clone());
        }
        Ok(c)
    }

    /// Makes a new master key version primary (RotateKeyOnDemand). Existing
    /// headers keep their version until a rewrap.
    pub fn rotate(&self) -> Result<u32, KeyError> {
        let v = self.change("rotate", None, None, |k| k.rotate())?;
        if self.mount.is_some() {
            tracing::info!("key rotated: version {v} is primary");
        }
        self.follow_rotation();
        Ok(v)
    }

    /// Re-wraps every header and directory record under the primary version,
    /// here and now (`progress` shows how far it got).
    pub fn rewrap(&self, progress: &RewrapProgress) -> Result<RewrapReport, KeyError> {
        self.rewrap_key(None, progress)
    }

    /// [`KeyService::rewrap`] of the entries of key `key` only (under its
    /// primary version; `None`: every entry under its own key's), here and
    /// now: the offline `sealfs rewrap --key`.
    pub fn rewrap_key(
        &self,
        key: Option<u32>,
        progress: &RewrapProgress,
    ) -> Result<RewrapReport, KeyError> {
        self.check_kms()?;
        let (primary, detail) = {
            let kr = self.vol.keyring().read();
            match key {
                None => (kr.primary(), None),
                Some(k) => (kr.primary_of(k).unwrap_or(0), Some(key_label(&kr, k))),
            }
        };
        self.audit("rewrap", Some(primary), detail)?;
        self.vol.rewrap_to(progress, RewrapTo::OwnKey(key), None)?;
        Ok(progress.report())
    }

    /// Checks that a rewrap may start and records it; marks `progress`
    /// running. Returns the version it targets. The caller runs the walk
    /// (e.g. [`spawn_rewrap`]).
    pub fn begin_rewrap(&self, progress: &RewrapProgress) -> Result<u32, KeyError> {
        self.begin_rewrap_to(progress, RewrapTo::OwnKey(None), None)
    }

    /// [`KeyService::begin_rewrap`] for a rewrap `to` a key, of the
    /// entries at or below the plaintext `path` (all if `None`). Returns
    /// the primary version of the key it targets (of the default key for
    /// a rewrap of every key).
    pub fn begin_rewrap_to(
        &self,
        progress: &RewrapProgress,
        to: RewrapTo,
        path: Option<&str>,
    ) -> Result<u32, KeyError> {
        const BUSY: &str = "a rewrap is already running";
        if self.vol.read_only() {
            return Err(KeyError::ReadOnlyMount);
        }
        if progress.running.load(Ordering::Acquire) {
            return Err(KeyError::Busy(BUSY.into()));
        }
        self.check_kms()?;
        let (primary, detail) = {
            let kr = self.vol.keyring().read();
            match to {
                RewrapTo::OwnKey(None) => (kr.primary(), None),
                RewrapTo::OwnKey(Some(k)) | RewrapTo::Key(k) => (
                    kr.primary_of(k).unwrap_or(0),
                    Some(match path {
                        Some(p) => format!("{p} -> {}", key_label(&kr, k)),
                        None => key_label(&kr, k),
                    }),
                ),
            }
        };
        self.audit("rewrap", Some(primary), detail)?;
        if progress.running.swap(true, Ordering::AcqRel) {
            return Err(KeyError::Busy(BUSY.into()));
        }
        progress.reset();
        Ok(primary)
    }

    /// Refuses all file I/O with EACCES until [`KeyService::enable`]
    /// (DisableKey). On a mount the kernel's cached pages are written back
    /// and dropped first (while writes still work) and again after.
    pub fn disable(&self) -> Result<(), KeyError> {
        self.drop_cached_file_data();
        self.change("disable", None, None, |k| {
            k.set_disabled(true);
            Ok(())
        })?;
        self.drop_cached_file_data();
        Ok(())
    }

    /// Allows file I/O again (EnableKey).
    pub fn enable(&self) -> Result<(), KeyError> {
        self.change("enable", None, None, |k| {
            k.set_disabled(false);
            Ok(())
        })?;
        Ok(())
    }

    /// Sets the automatic rotation period ("90d", "12h", …) or, with `None`
    /// or `"off"`, turns automatic rotation off; stored in the keyring
    /// (layout 2) or in `sealfs.toml` (layout 1).
    ///
    /// A period needs a unit, and one shorter than
    /// [`MIN_ROTATION_PERIOD_SECS`] is refused unless `allow_short`: the
    /// daemon decides, whatever client asks.
    pub fn set_rotation_period(
        &self,
        period: Option<&str>,
        allow_short: bool,
    ) -> Result<RotationSchedule, KeyError> {
        let period = checked_period(period, allow_short)?;
        let detail = Some(period.clone().unwrap_or_else(|| "off".into()));
        if self.vol.keyring().read().layout() == 2 {
            self.change("set_rotation_period", None, detail, |k| {
                k.set_rotation_period(period)
            })?;
        } else {
            self.audit("set_rotation_period", None, detail)?;
            self.vol.update_config(|c| {
                c.rotation_period = period;
                Ok(())
            })?;
        }
        Ok(RotationSchedule {
            rotation_period: self.rotation_period(),
            next_rotation: self.next_rotation(),
        })
    }

    /// When the next automatic rotation is due (seconds since the epoch):
    /// the primary version's creation plus the period, if one is set.
    pub fn next_rotation(&self) -> Option<u64> {
        let period = self.rotation_period()?;
        let secs = parse_duration(&period).ok()?;
        let kr = self.vol.keyring().read();
        let created = kr
            .versions()
            .iter()
            .find(|v| v.version == kr.primary())?
            .created;
        Some(created.saturating_add(secs))
    }

    /// Trims: retires every enabled version below `min_version` (the
    /// minimum decryption version; it may not exceed the primary).
    ///
    /// Every directory record is first re-wrapped to the primary version (a
    /// retired version must never cut off the namespace, or the volume
    /// would not even mount for an untrim); if one cannot be, nothing is
    /// retired. Then a census: while a header still uses a version below
    /// `min_version` the trim is refused, unless `force` (those headers then
    /// stay unreadable until [`KeyService::untrim`]).
    pub fn trim(&self, min_version: u32, force: bool) -> Result<Trimmed, KeyError> {
        let key = self.vol.keyring().read().default_key_id();
        self.trim_key(key, min_version, force)
    }

    /// [`KeyService::trim`] for the versions of key `key` only.
    pub fn trim_key(&self, key: u32, min_version: u32, force: bool) -> Result<Trimmed, KeyError> {
        let (primary, own): (u32, Vec<u32>) = {
            let kr = self.vol.keyring().read();
            let k = kr
                .key(key)
                .ok_or_else(|| KeyError::Invalid(format!("no key {key}")))?;
            (k.primary, k.versions.iter().map(|v| v.version).collect())
        };
        if min_version > primary {
            return Err(KeyError::Invalid(format!(
                "cannot retire the primary version {primary} (minimum {min_version} is above it)"
            )));
        }
        if self.vol.read_only() {
            return Err(KeyError::ReadOnlyMount);
        }
        let (dirs_rewrapped, dirs_failed) = self.vol.rewrap_dir_records()?;
        if dirs_failed > 0 {
            return Err(KeyError::Invalid(format!(
                "{dirs_failed} directory records could not be re-wrapped to the primary version; nothing retired"
            )));
        }
        let census = self.census()?;
        let still: u64 = census
            .files
            .iter()
            .chain(census.dirs.iter())
            .chain(census.unreadable_by_version.iter())
            .filter(|(v, _)| **v < min_version && own.contains(v))
            .map(|(_, n)| *n)
            .sum();
        if still > 0 && !force {
            return Err(KeyError::Invalid(format!(
                "{still} headers still use versions below {min_version}; run rewrap first (or force)"
            )));
        }
        let detail = format!(
            "{} below {min_version}",
            key_label(&self.vol.keyring().read(), key)
        );
        let retired = self.change("retire_key_versions", None, Some(detail), |k| {
            k.retire_below_in(key, min_version)
        })?;
        Ok(Trimmed {
            retired,
            directory_records_rewrapped: dirs_rewrapped,
            headers_left_unreadable: still,
        })
    }

    /// Untrims: re-enables a retired version.
    pub fn untrim(&self, version: u32) -> Result<(), KeyError> {
        self.change("enable_key_version", Some(version), None, |k| {
            k.unretire(version)
        })?;
        Ok(())
    }

    /// Schedules the destruction (crypto-shredding) of a retired version
    /// after `wait` ([`DEFAULT_DELETION_WAIT`] if `None`). A census first
    /// counts what would become unreadable; without `confirm` nothing
    /// changes (a dry run).
    pub fn schedule_deletion(
        &self,
        version: u32,
        wait: Option<&str>,
        confirm: bool,
    ) -> Result<DeletionPlan, KeyError> {
        let wait = wait.unwrap_or(DEFAULT_DELETION_WAIT);
        let secs = parse_duration_with_unit(wait).map_err(KeyError::Invalid)?;
        let due = now_secs()
            .checked_add(secs)
            .ok_or_else(|| KeyError::Invalid(format!("waiting period {wait} is too long")))?;
        let state = self
            .vol
            .keyring()
            .read()
            .key_of_version(version)
            .and_then(|k| k.versions.iter().find(|v| v.version == version))
            .map(|v| v.state);
        match state {
            None => return Err(KeyError::Invalid(format!("no key version {version}"))),
            Some(KeyState::Retired) => {}
            Some(_) => {
                return Err(KeyError::Invalid(format!(
                    "version {version} must be retired (trim) before its deletion is scheduled"
                )))
            }
        }
        let census = self.census()?;
        let would_orphan = census.files.get(&version).copied().unwrap_or(0)
            + census.dirs.get(&version).copied().unwrap_or(0)
            + census
                .unreadable_by_version
                .get(&version)
                .copied()
                .unwrap_or(0);
        if !confirm {
            return Ok(DeletionPlan {
                version,
                would_orphan,
                deletion_due: None,
                confirmed: false,
            });
        }
        self.change(
            "schedule_key_deletion",
            Some(version),
            Some(format!("due {}", format_utc(due))),
            |k| k.schedule_deletion(version, due),
        )?;
        Ok(DeletionPlan {
            version,
            would_orphan,
            deletion_due: Some(due),
            confirmed: true,
        })
    }

    /// Cancels a scheduled destruction: the version is retired again.
    pub fn cancel_deletion(&self, version: u32) -> Result<(), KeyError> {
        self.change("cancel_key_deletion", Some(version), None, |k| {
            k.cancel_deletion(version)
        })?;
        Ok(())
    }

    /// Runs what is due at `now`: automatic rotation, and the destruction
    /// of versions whose waiting period is over. Returns what it did, in
    /// words. A read-only volume runs nothing.
    pub fn run_schedules(&self, now: u64) -> Result<Vec<String>, KeyError> {
        let mut done = Vec::new();
        if self.vol.read_only() {
            return Ok(done);
        }
        if self.next_rotation().is_some_and(|due| due <= now) {
            let v = self.change("rotate", None, Some("automatic".into()), |k| k.rotate())?;
            self.follow_rotation();
            done.push(format!("rotated: version {v} is primary"));
        }
        done.extend(self.run_key_schedules(now)?);
        if self.vol.keyring().read().destruction_due(now) {
            let destroyed = self.change(
                "destroy_key_versions",
                None,
                Some("waiting period over".into()),
                |k| Ok(k.destroy_due(now)),
            )?;
            for v in destroyed {
                done.push(format!("destroyed key version {v}"));
            }
        }
        if let Some(p) = self.apply_audit_retention(now.saturating_mul(1000))? {
            if p.segments + p.leftovers_removed > 0 {
                done.push(format!(
                    "audit retention: pruned {} segment(s), {} record(s)",
                    p.segments, p.records
                ));
            }
        }
        Ok(done)
    }

    /// Changes the unlock secret (re-seals the keyring under it; no file
    /// data is touched).
    pub fn change_secret(
        &self,
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<(), KeyError> {
        let slot = self.vol.keyring().read().unlocked_by().and_then(|u| u.slot);
        let kdf = self.change(
            "change_secret",
            None,
            slot.map(|s| format!("replaces keyslot {s}")),
            |k| k.change_secret(secret, params),
        )?;
        Ok(self.vol.after_secret_change(kdf)?)
    }
}

/// A rotation period as stored: `None` for none or `"off"`; one needs a
/// unit, and one shorter than [`MIN_ROTATION_PERIOD_SECS`] is refused
/// unless `allow_short`.
pub(crate) fn checked_period(
    period: Option<&str>,
    allow_short: bool,
) -> Result<Option<String>, KeyError> {
    let period = period.filter(|p| *p != "off").map(str::to_string);
    if let Some(p) = &period {
        let secs = parse_duration_with_unit(p).map_err(KeyError::Invalid)?;
        if secs < MIN_ROTATION_PERIOD_SECS && !allow_short {
            return Err(KeyError::Invalid(format!(
                "a rotation period of {p} is shorter than a day: every rotation makes a new master key version that stays until rewrap and trim; use e.g. 90d, or pass --allow-short (allow_short) to set it anyway"
            )));
        }
    }
    Ok(period)
}

/// Runs a rewrap that [`KeyService::begin_rewrap`] admitted, on a thread
/// of its own (the control plane must not block on the walk).
pub fn spawn_rewrap(vol: Arc<Volume>, progress: Arc<RewrapProgress>) -> std::io::Result<()> {
    spawn_rewrap_to(vol, progress, RewrapTo::OwnKey(None), None)
}

/// [`spawn_rewrap`] of a rewrap `to` a key, at or below the plaintext
/// `path` (everything if `None`).
pub fn spawn_rewrap_to(
    vol: Arc<Volume>,
    progress: Arc<RewrapProgress>,
    to: RewrapTo,
    path: Option<String>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sealfs-rewrap".into())
        .spawn(move || {
            let under = path.as_deref().map(|p| p.trim_matches('/').as_bytes());
            if let Err(e) = vol.rewrap_to(&progress, to, under) {
                tracing::warn!("rewrap failed: {e}");
                progress.running.store(false, Ordering::Release);
            }
        })
        .map(|_| ())
}
