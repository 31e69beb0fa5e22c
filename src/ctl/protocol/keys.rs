//! Requests' arguments and results of the named-key operations (issue 22):
//! `key_create`, `key_list`, `key_alias_add|remove`, `key_assign`,
//! `key_unassign`, `rewrap_path`, and the `key` field every key request may
//! carry (docs/CONTROL.md §16).
//!
//! Owns: their wire shape.
//! Must never: carry key material in a result; imported material travels
//! only in a request, in a [`KeyMaterial`] that `Debug` never prints.

use serde::{Deserialize, Serialize};

use super::results::VersionStatus;
use crate::kms::KeyInfo;
use crate::volume::walk::Census;

/// 32 bytes of imported key material, as 64 hex digits (BYOK; sent once,
/// in `key_create`, over the local, peer-checked socket). Never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyMaterial(pub String);

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

/// One key of `key_list` (and `status.keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Key id.
    pub id: u32,
    /// Aliases.
    pub aliases: Vec<String>,
    /// Free text.
    pub description: String,
    /// `enabled`, `disabled`, `pending_deletion` or `expired`.
    pub state: String,
    /// `generated` or `external` (imported; never exportable).
    pub origin: String,
    /// The default key (new entries outside every assignment)?
    pub default: bool,
    /// Creation (Unix seconds).
    pub created: u64,
    /// The version new wrappings use.
    pub primary: u32,
    /// Automatic rotation period, if on.
    pub rotation_period: Option<String>,
    /// Next automatic rotation, if on.
    pub next_rotation: Option<u64>,
    /// When the key is disabled automatically, if ever.
    pub expires: Option<u64>,
    /// When the key is destroyed (pending deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_due: Option<u64>,
    /// Its versions (with the last census's counts, once one ran).
    pub versions: Vec<VersionStatus>,
}

impl From<KeyInfo> for KeyEntry {
    fn from(k: KeyInfo) -> Self {
        KeyEntry::with_census(k, None)
    }
}

impl KeyEntry {
    /// The entry of key `k`, with each version's counts from `census`
    /// (once one ran).
    pub fn with_census(k: KeyInfo, census: Option<&Census>) -> Self {
        KeyEntry {
            id: k.id,
            aliases: k.aliases,
            description: k.description,
            state: k.state,
            origin: k.origin,
            default: k.default,
            created: k.created,
            primary: k.primary,
            rotation_period: k.rotation_period,
            next_rotation: k.next_rotation,
            expires: k.expires,
            deletion_due: k.deletion_due,
            versions: k
                .versions
                .iter()
                .map(|v| VersionStatus::of(v, census))
                .collect(),
        }
    }
}

/// The result of `key_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyListResult {
    /// Every key.
    pub keys: Vec<KeyEntry>,
    /// The subtree assignments: plaintext path (when it could be found on
    /// this mount) or directory id, and the key.
    pub assignments: Vec<AssignmentEntry>,
}

/// One subtree assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentEntry {
    /// The directory id (32 hex digits).
    pub dir_id: String,
    /// The key id.
    pub key_id: u32,
}

/// The result of `key_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    /// The new key's id.
    pub id: u32,
    /// Its first version.
    pub primary: u32,
}

/// The result of `key_policy_get` and `key_policy_set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicyResult {
    /// The key.
    pub id: u32,
    /// Its policy in normal form (user and group names as ids, times as
    /// seconds since the epoch); null: none (the owner and root
    /// administer, grants decide use).
    pub policy: Option<String>,
    /// SHA-256 of `policy` (hex), as audited; null without one.
    pub sha256: Option<String>,
}

/// The result of `key_alias_add`, `key_alias_remove`, `key_assign`,
/// `key_unassign`, and of a key-scoped `disable`/`enable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChanged {
    /// The key.
    pub id: u32,
    /// Its aliases now.
    pub aliases: Vec<String>,
    /// Its state now.
    pub state: String,
}
