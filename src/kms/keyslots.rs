//! Keyslot policy: who may add, remove and re-wrap a volume's keyslots,
//! and the upgrade of a layout-1 keyring, each an audited keyring change
//! (see the parent module's sequence).
//!
//! Owns: the rules (a new slot needs the volume unlocked, and a KMS slot
//! that unlocked it must still say yes; the last slot is never removed; the
//! upgrade announces the new layout in `sealfs.toml` before it stores it).
//! Must never: change a slot without its audit record, or keep the old
//! KEK across an upgrade.

use crate::format::config::FEATURE_KEYSLOTS;
use crate::keyring::{KeyProvider, SlotInfo};

use super::{KeyError, KeyService};

impl KeyService<'_> {
    /// The volume's keyslots (empty for a layout-1 keyring).
    pub fn keyslots(&self) -> Vec<SlotInfo> {
        self.vol.keyring().read().slots()
    }

    /// Adds a keyslot for `p` labelled `label`.
    pub fn add_keyslot(&self, p: &dyn KeyProvider, label: &str) -> Result<SlotInfo, KeyError> {
        self.check_kms()?;
        let detail = format!("{} {label:?}", p.kind().name);
        self.change("keyslot_add", None, Some(detail), |k| k.add_slot(p, label))
    }

    /// Removes keyslot `id` (never the last).
    pub fn remove_keyslot(&self, id: u32) -> Result<SlotInfo, KeyError> {
        let detail = format!("slot {id}");
        self.change("keyslot_remove", None, Some(detail), |k| k.remove_slot(id))
    }

    /// Moves keyslot `id` to the newest version of its KMS key (Transit
    /// `rewrap`), so older versions can be retired server-side. Returns the
    /// slot before and after.
    pub fn rewrap_keyslot(
        &self,
        id: u32,
        p: &dyn KeyProvider,
    ) -> Result<(SlotInfo, SlotInfo), KeyError> {
        let detail = format!("slot {id}");
        self.change("keyslot_rewrap", None, Some(detail), |k| {
            k.rewrap_slot(id, p)
        })
    }

    /// Upgrades a layout-1 keyring in place: `sealfs.toml` announces the
    /// keyslots feature (an older sealfs refuses the volume from here on),
    /// then the keyring is stored as layout 2 under a NEW random KEK held
    /// by one slot for `p` (the secret that unlocked it; a passphrase keeps
    /// the cost `p` carries), then the config's `[kdf]` goes. A crash
    /// anywhere leaves a volume that opens (the keyring decides; a config
    /// that disagrees is corrected at the next writable open). The rotation
    /// period moves from the config into the keyring.
    pub fn upgrade(&self, p: &dyn KeyProvider, label: &str) -> Result<SlotInfo, KeyError> {
        if self.vol.keyring().read().layout() == 2 {
            return Err(KeyError::Invalid(
                "the volume already has keyslots (keyring layout 2)".into(),
            ));
        }
        self.vol.update_config(|c| {
            if !c.has_keyslots() {
                c.features.push(FEATURE_KEYSLOTS.to_string());
            }
            Ok(())
        })?;
        crate::keyring::kill_point("upgrade-config-announced");
        let period = self.vol.config().rotation_period;
        let info = self.change("keyring_upgrade", None, Some("layout 1 to 2".into()), |k| {
            let info = k.upgrade(p, label)?;
            k.set_rotation_period(period)?;
            Ok(info)
        })?;
        crate::keyring::kill_point("upgrade-keyring-stored");
        self.vol.update_config(|c| {
            c.kdf = None;
            c.rotation_period = None;
            Ok(())
        })?;
        Ok(info)
    }
}
