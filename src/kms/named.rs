//! Key policy for several named keys (issue 22): creating keys (generated
//! or imported), aliases, each key's own rotation, state, schedule and
//! deletion, and the subtree assignments. Every change goes through
//! [`KeyService`]'s one audited sequence; each record names the key (id
//! and alias) in its `detail`.
//!
//! Owns: which key a request addresses (an alias or an id; none: the
//! default key), the rules of per-key disable, deletion and expiry, and
//! per-key automatic rotation.
//! Must never: put key material in a result, an error or a record, or
//! rotate imported (external) material.

use crate::format::config::parse_duration;
use crate::format::grants::format_utc;
use crate::format::keyring::{KeyLifecycle, KeyOrigin, KeyState};
use crate::keyring::{now_secs, Keyring, NewKey};
use crate::policy::key_policy::{policy_hash, Asker, KeyPolicy, KeyPrincipal};

use super::{KeyError, KeyService, VersionInfo, DEFAULT_DELETION_WAIT};

/// One named key, without its material ([`KeyService::list_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key id, from 1.
    pub id: u32,
    /// Its aliases.
    pub aliases: Vec<String>,
    /// Free text.
    pub description: String,
    /// `enabled`, `disabled`, `pending_deletion` (or `expired`: enabled but
    /// past its expiry, about to be disabled by the schedule).
    pub state: String,
    /// `generated` or `external`.
    pub origin: String,
    /// Whether it is the default key.
    pub default: bool,
    /// Creation time.
    pub created: u64,
    /// The version new wrappings use.
    pub primary: u32,
    /// Every version.
    pub versions: Vec<VersionInfo>,
    /// Automatic rotation period, if on.
    pub rotation_period: Option<String>,
    /// When the next automatic rotation is due.
    pub next_rotation: Option<u64>,
    /// When it is disabled automatically (imported keys).
    pub expires: Option<u64>,
    /// When the key is destroyed (pending deletion).
    pub deletion_due: Option<u64>,
}

/// What a new key is made of ([`KeyService::create_key`]).
pub struct KeySpec {
    /// Its alias.
    pub alias: String,
    /// Free text.
    pub description: String,
    /// Automatic rotation period ("90d").
    pub rotation_period: Option<String>,
    /// Imported material (exactly 32 bytes, zeroized when dropped).
    pub material: Option<crate::crypto::SecretKey>,
    /// When the key is disabled automatically (seconds since the epoch).
    pub expires: Option<u64>,
}

/// "key 2 (finance)": how records and messages name a key.
pub fn key_label(kr: &Keyring, id: u32) -> String {
    match kr.key(id).and_then(|k| k.aliases.first()) {
        Some(a) => format!("key {id} ({a})"),
        None => format!("key {id}"),
    }
}

fn lifecycle_name(k: &crate::format::keyring::Key, now: u64) -> &'static str {
    match k.state {
        KeyLifecycle::Enabled if k.expires.is_some_and(|e| e <= now) => "expired",
        KeyLifecycle::Enabled => "enabled",
        KeyLifecycle::Disabled => "disabled",
        KeyLifecycle::PendingDeletion => "pending_deletion",
    }
}

fn next_rotation_of(k: &crate::format::keyring::Key) -> Option<u64> {
    let secs = parse_duration(k.rotation_period.as_deref()?).ok()?;
    let created = k.versions.iter().find(|v| v.version == k.primary)?.created;
    Some(created.saturating_add(secs))
}

/// A user or group name to its id (thread-safe lookups: the daemon
/// resolves names while other threads run).
fn lookup_id(name: &str, group: bool) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| "a name has no NUL byte".to_string())?;
    let mut buf = vec![0u8; 16384];
    if group {
        // SAFETY: zeroed plain-old-data out-parameters; getgrnam_r writes
        // into `buf` only up to its length.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid pointers and the buffer's true length.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc == 0 && !out.is_null() {
            return Ok(gr.gr_gid);
        }
        Err(format!("no group named {name:?}"))
    } else {
        // SAFETY: as above, for getpwnam_r.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid pointers and the buffer's true length.
        let rc = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc == 0 && !out.is_null() {
            return Ok(pw.pw_uid);
        }
        Err(format!("no user named {name:?}"))
    }
}

/// `uid:N`, `gid:N`, `user:NAME`, `group:NAME`, or a bare user name.
fn resolve_principal(p: &str) -> Result<KeyPrincipal, String> {
    let num = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("{n:?} is not a number"))
    };
    match p.split_once(':') {
        Some(("uid", n)) => num(n).map(KeyPrincipal::Uid),
        Some(("gid", n)) => num(n).map(KeyPrincipal::Gid),
        Some(("user", n)) => lookup_id(n, false).map(KeyPrincipal::Uid),
        Some(("group", n)) => lookup_id(n, true).map(KeyPrincipal::Gid),
        Some(_) => Err("write uid:N, gid:N, user:NAME or group:NAME".into()),
        None => lookup_id(p, false).map(KeyPrincipal::Uid),
    }
}

impl KeyService<'_> {
    /// The stored policy of key `id` (normal form), if it has one.
    pub fn key_policy(&self, id: u32) -> Option<String> {
        self.vol
            .keyring()
            .read()
            .key(id)
            .and_then(|k| k.policy.clone())
    }

    /// Sets (`None`: clears) the policy of key `id`: parsed, names
    /// resolved to ids, refused if it would lock every administrator out;
    /// audited with the SHA-256 of the old and the new normal form.
    /// Returns the new normal form.
    pub fn set_key_policy(&self, id: u32, text: Option<&str>) -> Result<Option<String>, KeyError> {
        let now = now_secs();
        let time = |t: &str| crate::format::grants::parse_expiry(t, now).map_err(|e| e.to_string());
        let parsed = text
            .map(|t| KeyPolicy::parse(t, &resolve_principal, &time))
            .transpose()
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        if let Some(p) = &parsed {
            p.check_lockout()
                .map_err(|e| KeyError::Invalid(e.to_string()))?;
        }
        let hash = |p: &Option<String>| p.as_deref().map_or("none".to_string(), policy_hash);
        let old = self.key_policy(id);
        let new = parsed.as_ref().map(KeyPolicy::to_json);
        let detail = format!(
            "{} policy sha256 {} -> {}",
            self.label(id),
            hash(&old),
            hash(&new)
        );
        self.change("set_key_policy", None, Some(detail), |k| {
            k.set_key_policy(id, parsed.as_ref())
        })?;
        Ok(new)
    }

    /// Whether `who` may do the admin `action` on key `id`: by its
    /// policy, or, without one, if they are the mount owner (`owner`) or
    /// root.
    pub fn admin_allowed(&self, id: u32, action: &str, who: Asker<'_>, owner: u32) -> bool {
        let policy = self.vol.keyring().read().policy_of_key(id).cloned();
        match policy {
            Some(p) => p.allows(
                who,
                crate::policy::key_policy::action(action),
                now_secs(),
                &mut Vec::new,
            ),
            None => who.uid == 0 || who.uid == owner,
        }
    }

    /// The key named by `name` (an alias or a decimal id; `None`: the
    /// default key).
    pub fn resolve_key(&self, name: Option<&str>) -> Result<u32, KeyError> {
        let kr = self.vol.keyring().read();
        match name {
            None => Ok(kr.default_key_id()),
            Some(n) => kr
                .resolve_key(n)
                .map_err(|_| KeyError::Invalid(format!("no key with alias or id {n:?}"))),
        }
    }

    fn label(&self, id: u32) -> String {
        key_label(&self.vol.keyring().read(), id)
    }

    /// Every key, its versions and schedule (ListKeys + DescribeKey).
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        let kr = self.vol.keyring().read();
        let now = now_secs();
        let default = kr.default_key_id();
        let layout1_period = (kr.layout() == 1)
            .then(|| self.vol.config().rotation_period)
            .flatten();
        kr.keys()
            .iter()
            .map(|k| {
                let mut rotation_period = k.rotation_period.clone();
                if k.id == default && layout1_period.is_some() {
                    rotation_period = layout1_period.clone();
                }
                let mut with_period = k.clone();
                with_period.rotation_period = rotation_period.clone();
                KeyInfo {
                    id: k.id,
                    aliases: k.aliases.clone(),
                    description: k.description.clone(),
                    state: lifecycle_name(k, now).into(),
                    origin: match k.origin {
                        KeyOrigin::Generated => "generated",
                        KeyOrigin::External => "external",
                    }
                    .into(),
                    default: k.id == default,
                    created: k.created,
                    primary: k.primary,
                    versions: k
                        .versions
                        .iter()
                        .map(|v| VersionInfo {
                            version: v.version,
                            state: v.state,
                            created: v.created,
                            primary: v.version == k.primary,
                            deletion_due: (v.state == KeyState::PendingDeletion)
                                .then_some(v.deletion_due),
                        })
                        .collect(),
                    next_rotation: next_rotation_of(&with_period),
                    rotation_period,
                    expires: k.expires,
                    deletion_due: (k.state == KeyLifecycle::PendingDeletion)
                        .then(|| k.versions.iter().map(|v| v.deletion_due).max())
                        .flatten(),
                }
            })
            .collect()
    }

    /// Creates a key (CreateKey; ImportKeyMaterial with `spec.material`).
    /// Returns its id.
    pub fn create_key(&self, spec: KeySpec) -> Result<u32, KeyError> {
        if let Some(p) = &spec.rotation_period {
            parse_duration(p).map_err(KeyError::Invalid)?;
            if spec.material.is_some() {
                return Err(KeyError::Invalid(
                    "an imported key cannot rotate automatically (its material comes from outside)"
                        .into(),
                ));
            }
        }
        let origin = if spec.material.is_some() {
            "external"
        } else {
            "generated"
        };
        let detail = format!("alias {} origin {origin}", spec.alias);
        let id = self.change("create_key", None, Some(detail), |k| {
            k.create_key(NewKey {
                alias: spec.alias,
                description: spec.description,
                rotation_period: spec.rotation_period,
                material: spec.material,
                expires: spec.expires,
            })
        })?;
        Ok(id)
    }

    /// Adds an alias to key `id`.
    pub fn add_alias(&self, id: u32, alias: &str) -> Result<(), KeyError> {
        let detail = format!("{} + alias {alias}", self.label(id));
        self.change("add_alias", None, Some(detail), |k| k.add_alias(id, alias))
    }

    /// Removes an alias of key `id`.
    pub fn remove_alias(&self, id: u32, alias: &str) -> Result<(), KeyError> {
        let detail = format!("{} - alias {alias}", self.label(id));
        self.change("remove_alias", None, Some(detail), |k| {
            k.remove_alias(id, alias)
        })
    }

    /// A new primary version of key `id` (RotateKeyOnDemand).
    pub fn rotate_key(&self, id: u32) -> Result<u32, KeyError> {
        if id == self.vol.keyring().read().default_key_id() {
            return self.rotate();
        }
        let detail = Some(self.label(id));
        self.change("rotate", None, detail, |k| k.rotate_key(id))
    }

    /// Disables key `id` (DisableKey): exactly the entries it wraps refuse
    /// every use with EACCES. The kernel's cached pages are dropped before
    /// and after, as for the volume-wide disable.
    pub fn disable_key(&self, id: u32) -> Result<(), KeyError> {
        self.drop_cached_file_data();
        let detail = Some(self.label(id));
        self.change("disable", None, detail, |k| {
            k.set_key_state(id, KeyLifecycle::Disabled)
        })?;
        self.drop_cached_file_data();
        Ok(())
    }

    /// Enables key `id` again (EnableKey).
    pub fn enable_key(&self, id: u32) -> Result<(), KeyError> {
        let detail = Some(self.label(id));
        self.change("enable", None, detail, |k| {
            k.set_key_state(id, KeyLifecycle::Enabled)
        })
    }

    /// Sets or clears the automatic rotation period of key `id`.
    pub fn set_key_rotation_period(
        &self,
        id: u32,
        period: Option<&str>,
        allow_short: bool,
    ) -> Result<super::RotationSchedule, KeyError> {
        if id == self.vol.keyring().read().default_key_id() {
            return self.set_rotation_period(period, allow_short);
        }
        let period = super::checked_period(period, allow_short)?;
        let detail = format!(
            "{} {}",
            self.label(id),
            period.clone().unwrap_or_else(|| "off".into())
        );
        self.change("set_rotation_period", None, Some(detail), |k| {
            k.set_key_rotation_period(id, period)
        })?;
        let info = self.list_keys().into_iter().find(|k| k.id == id);
        Ok(super::RotationSchedule {
            rotation_period: info.as_ref().and_then(|k| k.rotation_period.clone()),
            next_rotation: info.and_then(|k| k.next_rotation),
        })
    }

    /// Schedules the destruction of the whole key `id` after `wait`
    /// (ScheduleKeyDeletion): it refuses every use from now on, and its
    /// versions are destroyed (crypto-shredded) when the wait is over.
    /// Without `confirm`, only counts what would become unreadable.
    pub fn schedule_key_deletion(
        &self,
        id: u32,
        wait: Option<&str>,
        confirm: bool,
    ) -> Result<(u64, Option<u64>), KeyError> {
        let wait = wait.unwrap_or(DEFAULT_DELETION_WAIT);
        let secs = parse_duration(wait).map_err(KeyError::Invalid)?;
        let due = now_secs()
            .checked_add(secs)
            .ok_or_else(|| KeyError::Invalid(format!("waiting period {wait} is too long")))?;
        let versions: Vec<u32> = {
            let kr = self.vol.keyring().read();
            let k = kr
                .key(id)
                .ok_or_else(|| KeyError::Invalid(format!("no key {id}")))?;
            k.versions.iter().map(|v| v.version).collect()
        };
        let census = self.census()?;
        let would_orphan: u64 = versions
            .iter()
            .map(|v| {
                census.files.get(v).copied().unwrap_or(0)
                    + census.dirs.get(v).copied().unwrap_or(0)
                    + census.unreadable_by_version.get(v).copied().unwrap_or(0)
            })
            .sum();
        if !confirm {
            return Ok((would_orphan, None));
        }
        self.drop_cached_file_data();
        let detail = format!("{} due {}", self.label(id), format_utc(due));
        self.change("schedule_key_deletion", None, Some(detail), |k| {
            k.schedule_key_deletion(id, due)
        })?;
        self.drop_cached_file_data();
        Ok((would_orphan, Some(due)))
    }

    /// Cancels the scheduled destruction of key `id`; it stays disabled.
    pub fn cancel_key_deletion(&self, id: u32) -> Result<(), KeyError> {
        let detail = Some(self.label(id));
        self.change("cancel_key_deletion", None, detail, |k| {
            k.cancel_key_deletion(id)
        })
    }

    /// Makes key `id` the key of new entries at and below the directory at
    /// the plaintext `path` (the nearest assigned ancestor wins). Existing
    /// entries keep their key until `rewrap --path`.
    pub fn assign(&self, path: &str, id: u32) -> Result<(), KeyError> {
        let chain = self.vol.dir_chain(path.as_bytes())?;
        let dir_id = *chain.last().expect("a chain holds the root");
        let detail = format!("{path} -> {}", self.label(id));
        self.change("assign_key", None, Some(detail), |k| k.assign(dir_id, id))?;
        Ok(())
    }

    /// Removes the assignment of the directory at `path`: its new entries
    /// get the key of its nearest assigned ancestor again.
    pub fn unassign(&self, path: &str) -> Result<bool, KeyError> {
        let chain = self.vol.dir_chain(path.as_bytes())?;
        let dir_id = *chain.last().expect("a chain holds the root");
        self.change("unassign_key", None, Some(path.to_string()), |k| {
            k.unassign(&dir_id)
        })
    }

    /// The key that applies at the plaintext directory `path`.
    pub fn key_at(&self, path: &str) -> Result<u32, KeyError> {
        let chain = self.vol.dir_chain(path.as_bytes())?;
        Ok(self.vol.key_for_chain(&chain))
    }

    /// The per-key schedules due at `now` (beyond the default key's, which
    /// [`KeyService::run_schedules`] runs): automatic rotation of other
    /// keys, and the disabling of keys past their expiry.
    pub(super) fn run_key_schedules(&self, now: u64) -> Result<Vec<String>, KeyError> {
        let mut done = Vec::new();
        let (due_rotation, expired) = {
            let kr = self.vol.keyring().read();
            let default = kr.default_key_id();
            let due: Vec<u32> = kr
                .keys()
                .iter()
                .filter(|k| {
                    k.id != default
                        && k.state == KeyLifecycle::Enabled
                        && k.origin == KeyOrigin::Generated
                        && next_rotation_of(k).is_some_and(|d| d <= now)
                })
                .map(|k| k.id)
                .collect();
            (due, kr.expired_keys(now))
        };
        for id in due_rotation {
            let detail = format!("{} automatic", self.label(id));
            let v = self.change("rotate", None, Some(detail), |k| k.rotate_key(id))?;
            done.push(format!(
                "rotated {}: version {v} is primary",
                self.label(id)
            ));
        }
        for id in expired {
            self.drop_cached_file_data();
            let detail = format!("{} expired", self.label(id));
            self.change("disable", None, Some(detail), |k| {
                k.set_key_state(id, KeyLifecycle::Disabled)
            })?;
            self.drop_cached_file_data();
            done.push(format!("disabled {}: its expiry passed", self.label(id)));
        }
        Ok(done)
    }
}
