//! Keyslots of a layout-2 keyring: adding (sealing the KEK for a new
//! provider), removing (never the last), re-wrapping (a Transit slot moved
//! to the key's newest version), replacing the slot a secret change
//! concerns, and the upgrade of a layout-1 keyring.
//!
//! Every change here is to the in-memory keyring; the caller stores it
//! (both copies, write-new-then-rename), so a crash leaves the old or the
//! new slot set.
//!
//! Owns: slot ids (one above the highest in use), labels, and the upgrade's
//! rule: a NEW random KEK, never the old KEK = Argon2(passphrase), so that
//! removing the old secret's slot later really locks it out.
//! Must never: store a slot set without a slot, or a secret in a label.

use super::provider::{self, KeyProvider, SlotContext};
use super::{now_secs, Keyring, KeyringError, UnlockSecret, UnlockedBy};
use crate::crypto::{Argon2Params, SecretKey};
use crate::format::keyring::{self as kfmt, KekSource, KeyringHeader, Slot, V2Header};

/// One keyslot, described without secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotInfo {
    /// Slot id.
    pub id: u32,
    /// Provider kind (`passphrase`, `key-file`, `recovery-key`, `pkcs11`, `transit`).
    pub provider: String,
    /// Label.
    pub label: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Public description (Argon2 cost, a URI without PIN, a server and key).
    pub description: String,
}

impl SlotInfo {
    /// Describes a slot of the table.
    pub fn of(s: &Slot) -> Self {
        SlotInfo {
            id: s.id,
            provider: provider::kind_name(s.kind),
            label: s.label.clone(),
            created: s.created,
            description: provider::describe_slot(s),
        }
    }
}

/// The slots of keyring bytes, read from the public header alone (no
/// secret needed; `None` for a layout-1 keyring, which has none).
pub fn slots_of(bytes: &[u8]) -> Result<Option<Vec<SlotInfo>>, KeyringError> {
    Ok(match kfmt::parse_header(bytes)? {
        KeyringHeader::V1(_) => None,
        KeyringHeader::V2(h) => Some(h.slots.iter().map(SlotInfo::of).collect()),
    })
}

impl Keyring {
    fn v2(&self) -> Result<&V2Header, KeyringError> {
        match &self.header {
            KeyringHeader::V2(h) => Ok(h),
            KeyringHeader::V1(_) => Err(KeyringError::NotUpgraded),
        }
    }

    fn v2_mut(&mut self) -> Result<&mut V2Header, KeyringError> {
        match &mut self.header {
            KeyringHeader::V2(h) => Ok(h),
            KeyringHeader::V1(_) => Err(KeyringError::NotUpgraded),
        }
    }

    /// The slot table (layout 2), described.
    pub fn slots(&self) -> Vec<SlotInfo> {
        match &self.header {
            KeyringHeader::V2(h) => h.slots.iter().map(SlotInfo::of).collect(),
            KeyringHeader::V1(_) => Vec::new(),
        }
    }

    /// The stored slot `id`.
    pub fn slot(&self, id: u32) -> Result<&Slot, KeyringError> {
        self.v2()?
            .slot(id)
            .ok_or_else(|| KeyringError::Slot(format!("no keyslot {id}")))
    }

    fn check_label(label: &str) -> Result<(), KeyringError> {
        if label.len() > kfmt::v2::MAX_LABEL || label.chars().any(char::is_control) {
            return Err(KeyringError::Slot(format!(
                "a slot label is at most {} bytes of printable text",
                kfmt::v2::MAX_LABEL
            )));
        }
        Ok(())
    }

    /// Seals the KEK for `p` into a new slot labelled `label`. The caller
    /// stores the keyring.
    pub fn add_slot(&mut self, p: &dyn KeyProvider, label: &str) -> Result<SlotInfo, KeyringError> {
        Self::check_label(label)?;
        let volume_id = self.volume_id();
        let h = self.v2()?;
        if h.slots.len() >= kfmt::MAX_SLOTS {
            return Err(KeyringError::Slot(format!(
                "a keyring holds at most {} slots",
                kfmt::MAX_SLOTS
            )));
        }
        let id = h.slots.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        let ctx = SlotContext {
            volume_id,
            slot_id: id,
        };
        let sealed = p.seal(&self.kek, &ctx).map_err(KeyringError::NewSlot)?;
        let slot = Slot {
            id,
            kind: p.kind().tag,
            label: label.to_string(),
            created: now_secs(),
            params: sealed.params,
            sealed: sealed.sealed,
        };
        let info = SlotInfo::of(&slot);
        self.v2_mut()?.slots.push(slot);
        Ok(info)
    }

    /// Removes slot `id` (never the last one). The caller stores the
    /// keyring. The KEK stays: see docs/FORMAT.md §2.2 for what that means
    /// for an old copy of the keyring.
    pub fn remove_slot(&mut self, id: u32) -> Result<SlotInfo, KeyringError> {
        let h = self.v2_mut()?;
        let i = h
            .slots
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| KeyringError::Slot(format!("no keyslot {id}")))?;
        if h.slots.len() == 1 {
            return Err(KeyringError::Slot(format!(
                "keyslot {id} is the last one: removing it would lock the volume for good; add another slot first"
            )));
        }
        Ok(SlotInfo::of(&h.slots.remove(i)))
    }

    /// Re-seals slot `id` under the newest version of its provider's key
    /// (Transit `rewrap`), through `p`. The caller stores the keyring.
    pub fn rewrap_slot(
        &mut self,
        id: u32,
        p: &dyn KeyProvider,
    ) -> Result<(SlotInfo, SlotInfo), KeyringError> {
        let volume_id = self.volume_id();
        let slot = self.slot(id)?.clone();
        if !p.matches(&slot) {
            return Err(KeyringError::Slot(format!(
                "keyslot {id} is a {} slot; the options given are for {}",
                provider::kind_name(slot.kind),
                p.kind().name
            )));
        }
        let ctx = SlotContext {
            volume_id,
            slot_id: id,
        };
        let sealed = match p.rewrap(&slot, &ctx) {
            None => {
                return Err(KeyringError::Slot(format!(
                    "keyslot {id} ({}) has nothing to rewrap: only Transit slots do",
                    provider::kind_name(slot.kind)
                )))
            }
            Some(r) => r.map_err(|source| KeyringError::Provider {
                slot: id,
                what: provider::describe_slot(&slot),
                source,
            })?,
        };
        let before = SlotInfo::of(&slot);
        let h = self.v2_mut()?;
        let s = h
            .slots
            .iter_mut()
            .find(|s| s.id == id)
            .expect("found above");
        s.sealed = sealed;
        Ok((before, SlotInfo::of(s)))
    }

    /// Upgrades a layout-1 keyring to layout 2 in memory: a new random KEK,
    /// held by one slot for `p` (the secret that unlocked the old one). The
    /// caller stores it (after announcing the layout in the config).
    pub fn upgrade(&mut self, p: &dyn KeyProvider, label: &str) -> Result<SlotInfo, KeyringError> {
        let h = match &self.header {
            KeyringHeader::V1(h) => *h,
            KeyringHeader::V2(_) => {
                return Err(KeyringError::Slot(
                    "the keyring already has keyslots".into(),
                ))
            }
        };
        let old = (self.header.clone(), self.kek.clone());
        self.header = KeyringHeader::V2(V2Header {
            volume_id: h.volume_id,
            generation: h.generation,
            slots: Vec::new(),
        });
        self.kek = SecretKey::generate()?;
        match self.add_slot(p, label) {
            Ok(info) => {
                self.unlocked_by = Some(UnlockedBy {
                    slot: Some(info.id),
                    provider: info.provider.clone(),
                    label: info.label.clone(),
                    description: info.description.clone(),
                });
                Ok(info)
            }
            Err(e) => {
                (self.header, self.kek) = old;
                Err(e)
            }
        }
    }

    /// Changes the unlock secret. Layout 1: re-derives the KEK from
    /// `secret` with a new salt (`params` for a passphrase) and returns the
    /// new KDF for the config. Layout 2: a new slot for `secret` replaces
    /// the slot that unlocked this keyring (the KEK stays), and `None` is
    /// returned.
    pub fn change_secret(
        &mut self,
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<Option<(KekSource, [u8; 16])>, KeyringError> {
        if let KeyringHeader::V1(h) = &mut self.header {
            let mut salt = [0u8; 16];
            crate::crypto::fill_random(&mut salt)?;
            let kek = match secret {
                UnlockSecret::Passphrase(pw) => {
                    params.check()?;
                    let src = KekSource::Passphrase(params);
                    (src, crate::crypto::stretch_passphrase(pw, &salt, params)?)
                }
                UnlockSecret::KeyFile(k) => (
                    KekSource::KeyFile,
                    crate::crypto::derive_key(k.expose(), &salt, b"sealfs v1 kek from key file"),
                ),
            };
            h.kek = kek.0;
            h.salt = salt;
            self.kek = kek.1;
            return Ok(Some((h.kek, h.salt)));
        }
        let old = self
            .unlocked_by
            .as_ref()
            .and_then(|u| u.slot)
            .ok_or_else(|| KeyringError::Slot("which keyslot to replace is unknown".into()))?;
        let provider = secret.provider(params);
        let label = self.slot(old)?.label.clone();
        let info = self.add_slot(provider.as_ref(), &label)?;
        self.remove_slot(old)?;
        self.unlocked_by = Some(UnlockedBy {
            slot: Some(info.id),
            provider: info.provider,
            label: info.label,
            description: info.description,
        });
        Ok(None)
    }
}
