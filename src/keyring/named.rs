//! Several named keys in one keyring (issue 22): creating a key (generated
//! or imported), its aliases, its own versions, state, rotation period and
//! expiry, and the subtree assignments that say which key new entries get.
//!
//! The body format has held all of this since layout 2 (docs/FORMAT.md
//! §2.4): key ids, aliases and versions are unique, and version numbers are
//! global across keys, so a header's key version names exactly one key.
//!
//! Owns: the rules of named keys (an alias is unique and valid; a key keeps
//! at least one alias; the default key keeps the alias `default`; version
//! numbers never repeat across keys; only layout 2 has room for more than
//! one key).
//! Must never: hand out key bytes, or let a disabled, pending-deletion or
//! expired key wrap or unwrap.

use crate::crypto::SecretKey;
use crate::format::keyring::{
    body::valid_alias, Assignment, Key, KeyLifecycle, KeyOrigin, KeyState, MasterKeyVersion,
    DEFAULT_ALIAS,
};

use super::{now_secs, Keyring, KeyringError};
use crate::policy::key_policy::KeyPolicy;
use std::sync::Arc;

/// What a new key is made of ([`Keyring::create_key`]).
pub struct NewKey {
    /// Its first alias.
    pub alias: String,
    /// Free text.
    pub description: String,
    /// Automatic rotation period ("90d"), if any.
    pub rotation_period: Option<String>,
    /// Imported key material (BYOK; `None`: generated from the OS CSPRNG).
    pub material: Option<SecretKey>,
    /// When the key is disabled automatically (seconds since the epoch).
    pub expires: Option<u64>,
}

fn lifecycle(m: String) -> KeyringError {
    KeyringError::Lifecycle(m)
}

impl Keyring {
    /// Every key, in id order of creation.
    pub fn keys(&self) -> &[Key] {
        &self.body.keys
    }

    /// The key with id `id`.
    pub fn key(&self, id: u32) -> Option<&Key> {
        self.body.keys.iter().find(|k| k.id == id)
    }

    fn key_mut(&mut self, id: u32) -> Result<&mut Key, KeyringError> {
        self.body
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| lifecycle(format!("no key {id}")))
    }

    /// The id of the default key (new entries outside every assignment).
    pub fn default_key_id(&self) -> u32 {
        self.body.default_key
    }

    /// The key named by an alias or a decimal id.
    pub fn resolve_key(&self, name: &str) -> Result<u32, KeyringError> {
        if let Some(k) = self
            .body
            .keys
            .iter()
            .find(|k| k.aliases.iter().any(|a| a == name))
        {
            return Ok(k.id);
        }
        match name.parse::<u32>() {
            Ok(id) if self.key(id).is_some() => Ok(id),
            _ => Err(lifecycle(format!("no key with alias or id {name:?}"))),
        }
    }

    /// The key that owns master key version `version`.
    pub fn key_of_version(&self, version: u32) -> Option<&Key> {
        self.body
            .keys
            .iter()
            .find(|k| k.versions.iter().any(|v| v.version == version))
    }

    /// The primary version of key `id`.
    pub fn primary_of(&self, id: u32) -> Option<u32> {
        self.key(id).map(|k| k.primary)
    }

    /// Whether key `k` may wrap and unwrap at `now`: enabled and not expired.
    pub(super) fn key_usable(k: &Key, now: u64) -> bool {
        k.state == KeyLifecycle::Enabled && k.expires.is_none_or(|e| e > now)
    }

    /// Whether data wrapped under `version` may be used now: the version
    /// is enabled and its key is usable (not disabled, pending deletion or
    /// expired).
    pub fn version_usable(&self, version: u32) -> bool {
        let now = now_secs();
        self.body.keys.iter().any(|k| {
            k.versions
                .iter()
                .any(|v| v.version == version && v.state == KeyState::Enabled)
                && Self::key_usable(k, now)
        })
    }

    /// Whether some key is not usable (disabled, pending deletion, expired
    /// or about to expire): the mount then checks every open file's key
    /// version per request; otherwise it need not.
    pub fn some_key_restricted(&self) -> bool {
        self.body
            .keys
            .iter()
            .any(|k| k.state != KeyLifecycle::Enabled || k.expires.is_some())
    }

    fn next_version(&self) -> u32 {
        self.body
            .all_versions()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn check_new_alias(&self, alias: &str) -> Result<(), KeyringError> {
        if !valid_alias(alias) {
            return Err(lifecycle(format!(
                "alias {alias:?} is not valid (1-64 characters of A-Z a-z 0-9 _ - /, not all digits)"
            )));
        }
        if self
            .body
            .keys
            .iter()
            .any(|k| k.aliases.iter().any(|a| a == alias))
        {
            return Err(lifecycle(format!("alias {alias:?} is taken")));
        }
        Ok(())
    }

    fn require_layout2(&self) -> Result<(), KeyringError> {
        if self.layout() == 2 {
            Ok(())
        } else {
            Err(KeyringError::NotUpgraded)
        }
    }

    /// Creates a key with one version (CreateKey; ImportKeyMaterial when
    /// `material` is given, recorded as `origin: external`). Returns its id.
    pub fn create_key(&mut self, new: NewKey) -> Result<u32, KeyringError> {
        self.require_layout2()?;
        self.check_new_alias(&new.alias)?;
        let id = self.body.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        let version = self.next_version();
        let now = now_secs();
        let origin = if new.material.is_some() {
            KeyOrigin::External
        } else {
            KeyOrigin::Generated
        };
        let key = match new.material {
            Some(k) => k,
            None => SecretKey::generate()?,
        };
        self.body.keys.push(Key {
            id,
            aliases: vec![new.alias],
            description: new.description,
            state: KeyLifecycle::Enabled,
            origin,
            created: now,
            rotation_period: new.rotation_period,
            expires: new.expires,
            policy: None,
            primary: version,
            versions: vec![MasterKeyVersion {
                version,
                state: KeyState::Enabled,
                created: now,
                deletion_due: 0,
                key,
            }],
        });
        self.rebuild_wrappers();
        Ok(id)
    }

    /// Adds an alias to key `id`.
    pub fn add_alias(&mut self, id: u32, alias: &str) -> Result<(), KeyringError> {
        self.require_layout2()?;
        self.check_new_alias(alias)?;
        self.key_mut(id)?.aliases.push(alias.to_string());
        Ok(())
    }

    /// Removes an alias of key `id` (never its last one, never `default`
    /// of the default key).
    pub fn remove_alias(&mut self, id: u32, alias: &str) -> Result<(), KeyringError> {
        self.require_layout2()?;
        let is_default = id == self.body.default_key;
        let k = self.key_mut(id)?;
        let Some(i) = k.aliases.iter().position(|a| a == alias) else {
            return Err(lifecycle(format!("key {id} has no alias {alias:?}")));
        };
        if k.aliases.len() == 1 {
            return Err(lifecycle(format!(
                "{alias:?} is the last alias of key {id}"
            )));
        }
        if is_default && alias == DEFAULT_ALIAS {
            return Err(lifecycle(
                "the default key keeps the alias \"default\"".into(),
            ));
        }
        k.aliases.remove(i);
        Ok(())
    }

    /// Adds a new version to key `id` and makes it primary (RotateKey).
    /// Version numbers are global across the volume's keys.
    pub fn rotate_key(&mut self, id: u32) -> Result<u32, KeyringError> {
        if id != self.body.default_key {
            self.require_layout2()?;
        }
        let next = self.next_version();
        let key = SecretKey::generate()?;
        let k = self.key_mut(id)?;
        if k.origin == KeyOrigin::External {
            return Err(lifecycle(format!(
                "key {id} holds imported material; import new material as a new key instead"
            )));
        }
        k.versions.push(MasterKeyVersion {
            version: next,
            state: KeyState::Enabled,
            created: now_secs(),
            deletion_due: 0,
            key,
        });
        k.primary = next;
        self.rebuild_wrappers();
        Ok(next)
    }

    /// Sets the state of key `id` as a whole (DisableKey, EnableKey).
    pub fn set_key_state(&mut self, id: u32, state: KeyLifecycle) -> Result<(), KeyringError> {
        self.require_layout2()?;
        let k = self.key_mut(id)?;
        if k.state == KeyLifecycle::PendingDeletion && state != KeyLifecycle::PendingDeletion {
            return Err(lifecycle(format!(
                "key {id} is pending deletion; cancel the deletion first"
            )));
        }
        k.state = state;
        Ok(())
    }

    /// Sets the automatic rotation period of key `id`.
    pub fn set_key_rotation_period(
        &mut self,
        id: u32,
        p: Option<String>,
    ) -> Result<(), KeyringError> {
        self.require_layout2()?;
        self.key_mut(id)?.rotation_period = p;
        Ok(())
    }

    /// Schedules the destruction of the whole key `id` at `due`
    /// (ScheduleKeyDeletion): the key refuses every use from now, and every
    /// one of its versions is destroyed when due. The default key cannot be.
    pub fn schedule_key_deletion(&mut self, id: u32, due: u64) -> Result<(), KeyringError> {
        self.require_layout2()?;
        if id == self.body.default_key {
            return Err(lifecycle(
                "the default key cannot be deleted (schedule its retired versions instead)".into(),
            ));
        }
        if self.body.assignments.iter().any(|a| a.key_id == id) {
            return Err(lifecycle(format!(
                "key {id} is assigned to a directory; unassign it first"
            )));
        }
        let k = self.key_mut(id)?;
        if k.state == KeyLifecycle::PendingDeletion {
            return Err(lifecycle(format!("key {id} is already pending deletion")));
        }
        if !k.versions.iter().any(|v| v.state == KeyState::Enabled) {
            return Err(lifecycle(format!("key {id} has no enabled version")));
        }
        // Only the enabled versions take the key's schedule: a retired
        // version stays retired, a version already scheduled keeps its own
        // date, so a cancel restores exactly the states from before. The
        // key's date is told apart from those by its value (moved on by a
        // second where it would coincide with one); at that date every
        // version of the key is destroyed, whatever its state.
        let mut due = due;
        while k
            .versions
            .iter()
            .any(|v| v.state == KeyState::PendingDeletion && v.deletion_due == due)
        {
            due += 1;
        }
        k.state = KeyLifecycle::PendingDeletion;
        for v in k.versions.iter_mut() {
            if v.state == KeyState::Enabled {
                v.state = KeyState::PendingDeletion;
                v.deletion_due = due;
            }
        }
        self.rebuild_wrappers();
        Ok(())
    }

    /// Cancels the scheduled destruction of key `id`: the versions the
    /// schedule took from enabled are enabled again, retired ones stay
    /// retired, ones scheduled on their own stay scheduled; the key stays
    /// disabled (as the KMS does). (A schedule made before this rule put
    /// every version at the key's date: those all come back enabled.)
    pub fn cancel_key_deletion(&mut self, id: u32) -> Result<(), KeyringError> {
        self.require_layout2()?;
        let k = self.key_mut(id)?;
        if k.state != KeyLifecycle::PendingDeletion {
            return Err(lifecycle(format!("key {id} is not pending deletion")));
        }
        let key_due = k.key_deletion_due();
        k.state = KeyLifecycle::Disabled;
        for v in k.versions.iter_mut() {
            if v.state == KeyState::PendingDeletion && Some(v.deletion_due) == key_due {
                v.state = KeyState::Enabled;
                v.deletion_due = 0;
            }
        }
        self.rebuild_wrappers();
        Ok(())
    }

    /// The keys whose expiry has passed at `now` but are still enabled.
    pub fn expired_keys(&self, now: u64) -> Vec<u32> {
        self.body
            .keys
            .iter()
            .filter(|k| k.state == KeyLifecycle::Enabled && k.expires.is_some_and(|e| e <= now))
            .map(|k| k.id)
            .collect()
    }

    /// The compiled policy of the key owning `version`, if it has one
    /// (`None`: the key follows the behaviour from before policies).
    pub fn policy_of_version(&self, version: u32) -> Option<&Arc<KeyPolicy>> {
        self.policies.get(&version)
    }

    /// Whether any key has a policy.
    pub fn any_policy(&self) -> bool {
        !self.policies.is_empty()
    }

    /// The compiled policy of key `id`, if it has one.
    pub fn policy_of_key(&self, id: u32) -> Option<&Arc<KeyPolicy>> {
        let v = self.key(id)?.versions.first()?.version;
        self.policies.get(&v)
    }

    /// Sets (or with `None` clears) the policy of key `id`, in normal form.
    pub fn set_key_policy(
        &mut self,
        id: u32,
        policy: Option<&KeyPolicy>,
    ) -> Result<(), KeyringError> {
        self.require_layout2()?;
        self.key_mut(id)?.policy = policy.map(KeyPolicy::to_json);
        self.rebuild_wrappers();
        Ok(())
    }

    /// The subtree assignments (directory id → key id).
    pub fn assignments(&self) -> &[Assignment] {
        &self.body.assignments
    }

    /// The key assigned to the directory `dir_id` itself, if any.
    pub fn assigned_key(&self, dir_id: &[u8; 16]) -> Option<u32> {
        self.body
            .assignments
            .iter()
            .find(|a| &a.dir_id == dir_id)
            .map(|a| a.key_id)
    }

    /// Assigns key `key_id` to the subtree at `dir_id` (replacing what was
    /// assigned there); assigning the default key removes the assignment
    /// only if no ancestor needs overriding, so it is kept as an entry.
    pub fn assign(&mut self, dir_id: [u8; 16], key_id: u32) -> Result<(), KeyringError> {
        self.require_layout2()?;
        let k = self
            .key(key_id)
            .ok_or_else(|| lifecycle(format!("no key {key_id}")))?;
        if k.state == KeyLifecycle::PendingDeletion {
            return Err(lifecycle(format!("key {key_id} is pending deletion")));
        }
        self.body.assignments.retain(|a| a.dir_id != dir_id);
        self.body.assignments.push(Assignment { dir_id, key_id });
        Ok(())
    }

    /// Removes the assignment of `dir_id`. Returns whether there was one.
    pub fn unassign(&mut self, dir_id: &[u8; 16]) -> Result<bool, KeyringError> {
        self.require_layout2()?;
        let before = self.body.assignments.len();
        self.body.assignments.retain(|a| &a.dir_id != dir_id);
        Ok(self.body.assignments.len() != before)
    }
}
