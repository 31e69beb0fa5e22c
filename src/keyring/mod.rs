//! The unlocked keyring: master key versions in memory, the wrapping ciphers
//! derived from them, the keyslots that hold the KEK, and the crash-safe
//! storage of `sealfs.keyring`.
//!
//! Rooms: [`provider`] (the roots of trust: one file per unlock method and
//! the [`KeyProvider`] trait), `secret` ([`UnlockSecret`], the passphrase
//! or key file of old), `slots` (adding, removing and re-wrapping keyslots,
//! and the upgrade from layout 1).
//!
//! Owns: unlocking (every slot a provider matches is tried; layout 1 derives
//! the KEK from the secret itself), loading the keyring (primary copy,
//! falling back to its `.bak` copy), writing it durably (write-new, fsync,
//! rename, fsync directory; then the same for the backup), the lifecycle of
//! master key versions, and handing out per-version wrapping ciphers.
//! Must never: log or expose key bytes; wrap under a version that is not
//! enabled; store a layout the volume's config does not announce.

mod named;
pub mod provider;
mod secret;
mod slots;

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::crypto::{CryptoError, SealingKey, SecretKey};
use crate::format::header::RecordKind;
use crate::format::keyring::{
    self as kfmt, AuditAnchor, KekSource, KeyState, KeyringBody, KeyringFormatError, KeyringHeader,
    MasterKeyVersion,
};
use crate::sys;
pub use named::NewKey;
pub use provider::{KeyProvider, KmsAuthority, KmsSeen, ProviderError, Unlock, Unlocker};
pub use secret::{SecretError, UnlockSecret};
pub use slots::{slots_of, SlotInfo};

pub use crate::format::reserved::{KEYRING_BACKUP, KEYRING_FILE};
/// File mode of both copies: the keyring is an offline guessing target for
/// a passphrase, so no other local user may read it.
pub const KEYRING_MODE: u32 = 0o600;

/// Errors of the keyring layer.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the keyring files failed.
    #[error("keyring I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The keyring could not be decoded or opened.
    #[error(transparent)]
    Format(#[from] KeyringFormatError),
    /// Key derivation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The unlock secret is of the wrong kind for this (layout-1) volume.
    #[error("this volume is unlocked with a {0}")]
    WrongSecretKind(&'static str),
    /// No slot of the keyring is of a kind the given secrets can open.
    #[error("no keyslot of this volume can be opened with {given} (its slots: {slots})")]
    NoSlot {
        /// What was given.
        given: String,
        /// The slots there are.
        slots: String,
    },
    /// A provider failed for a slot it matched (a token, a KMS).
    #[error("keyslot {slot} ({what}): {source}")]
    Provider {
        /// The slot.
        slot: u32,
        /// The slot's public description.
        what: String,
        /// What failed.
        #[source]
        source: ProviderError,
    },
    /// A provider failed before any slot (e.g. a new slot could not be sealed).
    #[error(transparent)]
    NewSlot(ProviderError),
    /// A keyslot operation that is not allowed (the last slot, an unknown id).
    #[error("{0}")]
    Slot(String),
    /// A keyslot operation on a layout-1 keyring.
    #[error(
        "this volume's keyring has no keyslots (layout 1); run 'sealfs upgrade CIPHERDIR' first"
    )]
    NotUpgraded,
    /// A lifecycle change that is not allowed (e.g. retiring the primary version).
    #[error("{0}")]
    Lifecycle(String),
    /// The keyring belongs to another volume than the config.
    #[error("keyring and sealfs.toml belong to different volumes (corrupted or swapped config)")]
    VolumeMismatch,
    /// The audit record a keyring change needs could not be written.
    #[error("the audit record could not be written ({0}); keyring not changed")]
    AuditRefused(String),
}

impl KeyringError {
    /// Whether this says the secret was wrong (or of the wrong kind), as
    /// opposed to a damaged keyring or a failing token or KMS.
    pub fn is_wrong_secret(&self) -> bool {
        matches!(
            self,
            KeyringError::Format(KeyringFormatError::Unlock)
                | KeyringError::WrongSecretKind(_)
                | KeyringError::NoSlot { .. }
        )
    }

    /// The provider error inside, if a provider failed.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            KeyringError::Provider { source, .. } | KeyringError::NewSlot(source) => Some(source),
            _ => None,
        }
    }
}

/// Which slot unlocked the keyring (public facts only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnlockedBy {
    /// The slot id (`None` for a layout-1 keyring, which has no slots).
    pub slot: Option<u32>,
    /// The provider kind (`passphrase`, `pkcs11`, …).
    pub provider: String,
    /// The slot's label.
    pub label: String,
    /// The slot's public description (a URI without PIN, a server and key).
    pub description: String,
}

/// The unlocked keyring.
#[derive(Clone)]
pub struct Keyring {
    header: KeyringHeader,
    kek: SecretKey,
    body: KeyringBody,
    wrappers: HashMap<(u32, bool), SealingKey>,
    /// The compiled policy of each key that has one, by master key version
    /// (so a header's version finds its key's policy in one lookup).
    policies: Arc<HashMap<u32, Arc<crate::policy::key_policy::KeyPolicy>>>,
    unlocked_by: Option<UnlockedBy>,
    authority: Option<Arc<dyn KmsAuthority>>,
    /// The generation the next store writes at least (after a rollback was
    /// accepted: above what the audit log or the KMS recorded).
    min_next_generation: u32,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("layout", &self.header.layout())
            .field("generation", &self.header.generation())
            .field("primary", &self.primary())
            .field("versions", &self.versions().len())
            .field("unlocked_by", &self.unlocked_by)
            .finish_non_exhaustive()
    }
}

pub use crate::sys::now_secs;

/// Crash-test hook: with `SEALFS_TEST_KILL_POINT=NAME` in its environment
/// a process kills itself (SIGKILL) on reaching the point `NAME`, so a test
/// can stop a keyring change at each of its steps (tests/keyslot_crash.rs).
/// Unset, as always outside tests, it costs one cached lookup. Points:
/// `keyring-change-recorded` (the change's audit record written, nothing
/// stored), `keyring-primary-written` (one copy new, one old),
/// `keyring-stored` (both new, the store not yet recorded),
/// `upgrade-config-announced` and `upgrade-keyring-stored` (between the
/// three writes of an upgrade); of hard links (tests/crash.rs):
/// `link-table-stored` (the new name listed durably, no backing link yet),
/// `link-made` (the backing link made, a first link's path slot not yet
/// dropped), `unlink-linked-removed` (one name of a linked file gone, its
/// tag still listed), `rename-file-rebound` (the new slot or tag durable,
/// not renamed) and `rename-file-moved` (renamed, the old slot or tag
/// still there); of packed tails (tests/packed_tails.rs, docs/FORMAT.md
/// §4.7): `tail-unpack-copied` (a packed tail copied to its place in the
/// group, group 0's state still packed), `tail-chunks-stored` (a change's
/// chunks stored at their places, block 0 not yet committed) and
/// `tail-committed` (block 0 committed, the cut or punch not yet made).
/// With `SEALFS_TEST_KILL_OP=OP` as well, a point fires
/// only inside the keyring change `OP` of a mounted daemon (`create_key`,
/// `assign_key`, `set_key_policy`, …; see [`ChangeInProgress`]), not in
/// the stores a mount makes at its start.
pub fn kill_point(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static OP: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("SEALFS_TEST_KILL_POINT").ok());
    if point.as_deref() != Some(name) {
        return;
    }
    let op = OP.get_or_init(|| std::env::var("SEALFS_TEST_KILL_OP").ok());
    let in_op = op
        .as_deref()
        .is_none_or(|op| CURRENT_CHANGE.with(|c| c.borrow().as_deref() == Some(op)));
    if in_op {
        // SAFETY: raising a signal at ourselves; SIGKILL does not return.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

thread_local! {
    static CURRENT_CHANGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Names the keyring change this thread is making, for [`kill_point`]
/// (tests only look at it), until dropped.
pub struct ChangeInProgress(());

impl ChangeInProgress {
    /// Marks `op` as this thread's change in progress.
    pub fn start(op: &str) -> Self {
        CURRENT_CHANGE.with(|c| *c.borrow_mut() = Some(op.to_string()));
        ChangeInProgress(())
    }
}

impl Drop for ChangeInProgress {
    fn drop(&mut self) {
        CURRENT_CHANGE.with(|c| *c.borrow_mut() = None);
    }
}

/// A description of what was given, for [`KeyringError::NoSlot`].
fn given(unlock: &dyn Unlocker) -> String {
    let ps = unlock.providers();
    if ps.is_empty() {
        return "nothing (no unlock option, and no slot opens unattended)".into();
    }
    ps.iter()
        .map(|p| p.kind().name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Keyring {
    /// A new layout-2 keyring for a new volume: a random KEK, master key
    /// version 1, and one slot per provider (labelled).
    pub fn create(
        volume_id: [u8; 16],
        slots: &[(&dyn KeyProvider, &str)],
    ) -> Result<Self, KeyringError> {
        if slots.is_empty() {
            return Err(KeyringError::Slot(
                "a volume needs at least one keyslot".into(),
            ));
        }
        let now = now_secs();
        let body = KeyringBody::single(
            1,
            0,
            vec![MasterKeyVersion {
                version: 1,
                state: KeyState::Enabled,
                created: now,
                deletion_due: 0,
                key: SecretKey::generate()?,
            }],
            now,
        );
        let header = KeyringHeader::V2(kfmt::V2Header {
            volume_id,
            generation: 0,
            slots: Vec::new(),
        });
        let mut k = Self::assemble(header, SecretKey::generate()?, body);
        for (p, label) in slots {
            k.add_slot(*p, label)?;
        }
        Ok(k)
    }

    fn assemble(header: KeyringHeader, kek: SecretKey, body: KeyringBody) -> Self {
        let mut k = Keyring {
            header,
            kek,
            body,
            wrappers: HashMap::new(),
            policies: Arc::new(HashMap::new()),
            unlocked_by: None,
            authority: None,
            min_next_generation: 0,
        };
        k.rebuild_wrappers();
        k
    }

    /// Unlocks keyring bytes with the first provider that opens a slot.
    pub fn unlock(bytes: &[u8], unlock: &dyn Unlocker) -> Result<Self, KeyringError> {
        match kfmt::parse_header(bytes)? {
            KeyringHeader::V1(h) => Self::unlock_v1(bytes, h, unlock),
            KeyringHeader::V2(h) => Self::unlock_v2(bytes, h, unlock),
        }
    }

    fn unlock_v1(
        bytes: &[u8],
        h: kfmt::V1Header,
        unlock: &dyn Unlocker,
    ) -> Result<Self, KeyringError> {
        let mut last = None;
        for p in unlock.providers() {
            let Some(kek) = p.v1_kek(&h) else { continue };
            let kek = kek.map_err(|source| KeyringError::Provider {
                slot: 0,
                what: p.describe(),
                source,
            })?;
            match kfmt::v1::open(bytes, &kek) {
                Ok(body) => {
                    let mut k = Self::assemble(KeyringHeader::V1(h), kek, body);
                    k.unlocked_by = Some(UnlockedBy {
                        slot: None,
                        provider: p.kind().name.into(),
                        label: String::new(),
                        description: "layout-1 keyring (no keyslots)".into(),
                    });
                    return Ok(k);
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e.into()),
            None => Err(KeyringError::WrongSecretKind(match h.kek {
                KekSource::Passphrase(_) => "passphrase",
                KekSource::KeyFile => "key file",
            })),
        }
    }

    fn unlock_v2(
        bytes: &[u8],
        h: kfmt::V2Header,
        unlock: &dyn Unlocker,
    ) -> Result<Self, KeyringError> {
        let mut tried = false;
        let mut failure: Option<KeyringError> = None;
        for p in unlock.providers() {
            for slot in h.slots.iter().filter(|s| p.matches(s)) {
                tried = true;
                let ctx = provider::SlotContext {
                    volume_id: h.volume_id,
                    slot_id: slot.id,
                };
                match p.unseal(slot, &ctx) {
                    Ok(u) => match kfmt::v2::open(bytes, &u.kek) {
                        Ok(body) => {
                            let by = UnlockedBy {
                                slot: Some(slot.id),
                                provider: provider::kind_name(slot.kind),
                                label: slot.label.clone(),
                                description: provider::describe_slot(slot),
                            };
                            let mut k = Self::assemble(KeyringHeader::V2(h.clone()), u.kek, body);
                            k.unlocked_by = Some(by);
                            k.authority = u.authority;
                            return Ok(k);
                        }
                        // The slot opened but the body did not: the header
                        // was edited (the body's AAD) or the body damaged.
                        Err(e) => failure = failure.or(Some(e.into())),
                    },
                    Err(ProviderError::WrongSecret) => {}
                    Err(source) => {
                        failure = failure.or(Some(KeyringError::Provider {
                            slot: slot.id,
                            what: provider::describe_slot(slot),
                            source,
                        }))
                    }
                }
            }
        }
        if !tried {
            return Err(KeyringError::NoSlot {
                given: given(unlock),
                slots: h
                    .slots
                    .iter()
                    .map(|s| format!("{} {}", s.id, provider::kind_name(s.kind)))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Err(failure.unwrap_or(KeyringError::Format(KeyringFormatError::Unlock)))
    }

    /// Loads and unlocks the keyring of `cipherdir`, falling back to the
    /// backup copy if the primary one is missing or damaged (not when a KMS
    /// could not be reached: the backup would wait for it again).
    pub fn load(cipherdir: BorrowedFd<'_>, unlock: &dyn Unlocker) -> Result<Self, KeyringError> {
        let primary = read_copy(cipherdir, KEYRING_FILE);
        let first_err = match primary {
            Ok(bytes) => match Self::unlock(&bytes, unlock) {
                Ok(k) => return Ok(k),
                Err(e) => e,
            },
            Err(e) => KeyringError::Io(e),
        };
        if let Some(ProviderError::Transit(t)) = first_err.provider_error() {
            if provider::transit::state_of(t) == "unreachable" {
                return Err(first_err);
            }
        }
        match read_copy(cipherdir, KEYRING_BACKUP) {
            Ok(bytes) => Self::unlock(&bytes, unlock).map_err(|_| first_err),
            // A refused object at the backup's name says more than a
            // missing or damaged primary copy.
            Err(e) if sys::WrongKind::is(&e) => Err(KeyringError::Io(e)),
            Err(_) => Err(first_err),
        }
    }

    /// Writes both copies durably (each: temp file, fsync, rename, fsync
    /// dir), one generation up.
    pub fn store(&mut self, cipherdir: BorrowedFd<'_>) -> Result<(), KeyringError> {
        let next = self
            .header
            .generation()
            .wrapping_add(1)
            .max(self.min_next_generation);
        self.header.set_generation(next);
        let bytes = kfmt::seal(&self.body, &self.header, &self.kek)?;
        sys::write_durably(cipherdir, KEYRING_FILE, &bytes, KEYRING_MODE)?;
        kill_point("keyring-primary-written");
        sys::write_durably(cipherdir, KEYRING_BACKUP, &bytes, KEYRING_MODE)?;
        kill_point("keyring-stored");
        Ok(())
    }

    /// Checks another stored copy of this keyring (e.g. the backup) with the
    /// KEK already derived, without running a KDF or asking a provider
    /// again: it must belong to this volume and open. Returns its generation.
    pub fn check_copy(&self, bytes: &[u8]) -> Result<u32, KeyringError> {
        let header = kfmt::parse_header(bytes)?;
        let same_kdf = match (&header, &self.header) {
            (KeyringHeader::V1(a), KeyringHeader::V1(b)) => a.kek == b.kek && a.salt == b.salt,
            (KeyringHeader::V2(_), KeyringHeader::V2(_)) => true,
            _ => false,
        };
        if !same_kdf || header.volume_id() != self.header.volume_id() {
            return Err(KeyringFormatError::Unlock.into());
        }
        kfmt::open(bytes, &self.kek)?;
        Ok(header.generation())
    }

    /// Brings both stored copies in line with this (loaded) keyring: a copy
    /// that is missing, damaged, or of another generation (a crash between
    /// the two writes of [`Keyring::store`]) is rewritten from the one that
    /// matches. Returns whether anything was rewritten.
    pub fn resync_copies(&self, cipherdir: BorrowedFd<'_>) -> Result<bool, KeyringError> {
        let read = |n: &str| read_copy(cipherdir, n).ok();
        let copies = [read(KEYRING_FILE), read(KEYRING_BACKUP)];
        let matches = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .is_some_and(|b| self.check_copy(b).ok() == Some(self.header.generation()))
        };
        let ok = [matches(&copies[0]), matches(&copies[1])];
        let (good, bad) = match ok {
            [true, true] | [false, false] => return Ok(false),
            [true, false] => (0, KEYRING_BACKUP),
            [false, true] => (1, KEYRING_FILE),
        };
        let bytes = copies[good].as_deref().expect("a matching copy was read");
        sys::write_durably(cipherdir, bad, bytes, KEYRING_MODE)?;
        Ok(true)
    }

    /// The keyring in `bytes` (another copy of this volume's keyring, e.g.
    /// stored by another host of a shared volume), opened with this
    /// keyring's KEK: no KDF runs and no provider is asked. Keeps what this
    /// daemon knows of its unlock (slot, KMS authority) and the generation
    /// floor. Refused when the KEK no longer opens it (a layout-1 upgrade
    /// or `passwd` on layout 1 made a new KEK elsewhere).
    pub fn reload(&self, bytes: &[u8]) -> Result<Keyring, KeyringError> {
        let header = kfmt::parse_header(bytes)?;
        if header.volume_id() != self.header.volume_id() {
            return Err(KeyringError::VolumeMismatch);
        }
        let body = kfmt::open(bytes, &self.kek)?;
        let mut k = Self::assemble(header, self.kek.clone(), body);
        k.unlocked_by = self.unlocked_by.clone();
        k.authority = self.authority.clone();
        k.min_next_generation = self.min_next_generation;
        Ok(k)
    }

    /// How many times the keyring has been rewritten (from its header).
    pub fn generation(&self) -> u32 {
        self.header.generation()
    }

    /// Makes the next store write generation `g` at least (accepting a
    /// rollback: the keyring then outranks what the audit log or the KMS
    /// recorded).
    pub fn raise_next_generation(&mut self, g: u32) {
        self.min_next_generation = self.min_next_generation.max(g);
    }

    /// The keyring layout (1 or 2).
    pub fn layout(&self) -> u16 {
        self.header.layout()
    }

    /// The volume id the keyring belongs to.
    pub fn volume_id(&self) -> [u8; 16] {
        self.header.volume_id()
    }

    /// How a layout-1 keyring's KEK is derived, and its salt (`None` for
    /// layout 2, whose slots say it each for itself).
    pub fn v1_kdf(&self) -> Option<(KekSource, [u8; 16])> {
        match &self.header {
            KeyringHeader::V1(h) => Some((h.kek, h.salt)),
            KeyringHeader::V2(_) => None,
        }
    }

    /// Which slot unlocked this keyring.
    pub fn unlocked_by(&self) -> Option<&UnlockedBy> {
        self.unlocked_by.as_ref()
    }

    /// The KMS with authority over this unlock, if a KMS slot opened it.
    pub fn authority(&self) -> Option<&Arc<dyn KmsAuthority>> {
        self.authority.as_ref()
    }

    /// The rollback anchor stored with the keyring (layout 2).
    pub fn anchor(&self) -> Option<AuditAnchor> {
        self.body.anchor
    }

    /// Sets the anchor the next store writes. A layout-1 keyring has no
    /// room for one: nothing happens.
    pub fn set_anchor(&mut self, a: Option<AuditAnchor>) {
        if self.layout() == 2 {
            self.body.anchor = a;
        }
    }

    /// The heads of hosts' audit streams as of each host's last store
    /// (shared storage; layout 2), by host id.
    pub fn stream_anchors(&self) -> &std::collections::BTreeMap<String, AuditAnchor> {
        &self.body.stream_anchors
    }

    /// Sets the anchor of `stream` (`None`: the local stream, as
    /// [`Keyring::set_anchor`]) that the next store writes; the other
    /// streams' anchors stay. Nothing on a layout-1 keyring.
    pub fn set_stream_anchor(&mut self, stream: Option<&str>, a: AuditAnchor) {
        match stream {
            None => self.set_anchor(Some(a)),
            Some(h) if self.layout() == 2 => {
                self.body.stream_anchors.insert(h.to_string(), a);
            }
            Some(_) => {}
        }
    }

    /// Forgets every anchor (an accepted rollback: they may point into a
    /// log that is gone).
    pub fn clear_anchors(&mut self) {
        self.body.anchor = None;
        self.body.stream_anchors.clear();
    }

    /// The audit log's retention rule (layout 2).
    pub fn audit_retention(&self) -> Option<&crate::format::keyring::AuditRetention> {
        self.body.audit_retention.as_ref()
    }

    /// Sets or clears the audit log's retention rule (layout 2 only: a
    /// layout-1 keyring has no authenticated room for it).
    pub fn set_audit_retention(
        &mut self,
        r: Option<crate::format::keyring::AuditRetention>,
    ) -> Result<(), KeyringError> {
        if self.layout() != 2 {
            return Err(KeyringError::NotUpgraded);
        }
        self.body.audit_retention = r;
        Ok(())
    }

    /// The automatic rotation period of the default key (layout 2; a
    /// layout-1 volume keeps it in `sealfs.toml`).
    pub fn rotation_period(&self) -> Option<String> {
        self.body.default().rotation_period.clone()
    }

    /// Sets the automatic rotation period of the default key (layout 2).
    pub fn set_rotation_period(&mut self, p: Option<String>) -> Result<(), KeyringError> {
        if self.layout() != 2 {
            return Err(KeyringError::NotUpgraded);
        }
        self.body.default_mut().rotation_period = p;
        Ok(())
    }

    /// The primary master key version of the default key.
    pub fn primary(&self) -> u32 {
        self.body.default().primary
    }

    /// The default key's versions (keys included; never print them).
    pub fn versions(&self) -> &[MasterKeyVersion] {
        &self.body.default().versions
    }

    fn rebuild_wrappers(&mut self) {
        let mut wrappers = HashMap::new();
        let vid = self.header.volume_id();
        for v in self.body.all_versions() {
            if v.state == KeyState::Destroyed {
                continue;
            }
            for kind in [RecordKind::File, RecordKind::Dir] {
                let k = v.key.derive(&vid, kind.wrap_label());
                wrappers.insert((v.version, kind == RecordKind::File), k.cipher());
            }
        }
        self.wrappers = wrappers;
        let mut policies = HashMap::new();
        for k in &self.body.keys {
            if let Some(text) = &k.policy {
                let p = Arc::new(crate::policy::key_policy::KeyPolicy::parse_stored(text));
                for v in &k.versions {
                    policies.insert(v.version, p.clone());
                }
            }
        }
        self.policies = Arc::new(policies);
    }

    fn version_mut(&mut self, version: u32) -> Result<&mut MasterKeyVersion, KeyringError> {
        self.body
            .keys
            .iter_mut()
            .flat_map(|k| k.versions.iter_mut())
            .find(|v| v.version == version)
            .ok_or_else(|| KeyringError::Lifecycle(format!("no key version {version}")))
    }

    /// Adds a new master key version to the default key and makes it
    /// primary (RotateKeyOnDemand). Version numbers are global across the
    /// volume's keys. The caller stores the keyring.
    pub fn rotate(&mut self) -> Result<u32, KeyringError> {
        self.rotate_key(self.body.default_key)
    }

    /// Whether the whole key is disabled (DisableKey).
    pub fn disabled(&self) -> bool {
        self.body.flags & kfmt::FLAG_DISABLED != 0
    }

    /// Disables or enables the whole key.
    pub fn set_disabled(&mut self, disabled: bool) {
        if disabled {
            self.body.flags |= kfmt::FLAG_DISABLED;
        } else {
            self.body.flags &= !kfmt::FLAG_DISABLED;
        }
    }

    /// Retires every enabled version below `min` (the minimum decryption
    /// version): they stay in the keyring but refuse to unwrap. Returns the
    /// versions retired.
    pub fn retire_below(&mut self, min: u32) -> Result<Vec<u32>, KeyringError> {
        self.retire_below_in(self.body.default_key, min)
    }

    /// [`Keyring::retire_below`] for the versions of key `id`.
    pub fn retire_below_in(&mut self, id: u32, min: u32) -> Result<Vec<u32>, KeyringError> {
        let primary = self
            .primary_of(id)
            .ok_or_else(|| KeyringError::Lifecycle(format!("no key {id}")))?;
        if min > primary {
            return Err(KeyringError::Lifecycle(format!(
                "cannot retire the primary version {primary} (minimum {min} is above it)"
            )));
        }
        let mut done = Vec::new();
        let k = self
            .body
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .expect("the key was found above");
        for v in k.versions.iter_mut() {
            if v.version < min && v.state == KeyState::Enabled {
                v.state = KeyState::Retired;
                done.push(v.version);
            }
        }
        self.rebuild_wrappers();
        Ok(done)
    }

    /// Re-enables a retired version (undoes a trim).
    pub fn unretire(&mut self, version: u32) -> Result<(), KeyringError> {
        let v = self.version_mut(version)?;
        if v.state != KeyState::Retired {
            return Err(KeyringError::Lifecycle(format!(
                "version {version} is not retired"
            )));
        }
        v.state = KeyState::Enabled;
        Ok(())
    }

    /// Schedules a retired version for destruction at `due` (ScheduleKeyDeletion).
    pub fn schedule_deletion(&mut self, version: u32, due: u64) -> Result<(), KeyringError> {
        let v = self.version_mut(version)?;
        if v.state != KeyState::Retired {
            return Err(KeyringError::Lifecycle(format!(
                "version {version} must be retired (trim) before its deletion is scheduled"
            )));
        }
        v.state = KeyState::PendingDeletion;
        v.deletion_due = due;
        Ok(())
    }

    /// Cancels a scheduled deletion; the version goes back to retired.
    pub fn cancel_deletion(&mut self, version: u32) -> Result<(), KeyringError> {
        let v = self.version_mut(version)?;
        if v.state != KeyState::PendingDeletion {
            return Err(KeyringError::Lifecycle(format!(
                "version {version} is not pending deletion"
            )));
        }
        v.state = KeyState::Retired;
        v.deletion_due = 0;
        Ok(())
    }

    /// Whether some version's destruction is due at `now`.
    pub fn destruction_due(&self, now: u64) -> bool {
        self.body
            .all_versions()
            .any(|v| v.state == KeyState::PendingDeletion && v.deletion_due <= now)
    }

    /// Destroys every version whose deletion is due at `now`: its key bytes
    /// are erased (crypto-shredding). Returns the versions destroyed.
    pub fn destroy_due(&mut self, now: u64) -> Vec<u32> {
        let mut done = Vec::new();
        for k in self.body.keys.iter_mut() {
            // A whole key due for deletion loses every version, retired
            // ones included (see `schedule_key_deletion`).
            let whole_key = k.key_deletion_due().is_some_and(|d| d <= now);
            for v in k.versions.iter_mut() {
                if (v.state == KeyState::PendingDeletion && v.deletion_due <= now)
                    || (whole_key && v.state != KeyState::Destroyed)
                {
                    v.state = KeyState::Destroyed;
                    v.key = SecretKey::from_bytes([0u8; 32]);
                    done.push(v.version);
                }
            }
        }
        if !done.is_empty() {
            self.rebuild_wrappers();
        }
        done
    }

    /// The master key of `version` unless it is destroyed: for deriving the
    /// audit-log and grant-store keys (never for wrapping data keys).
    pub(crate) fn master_key(&self, version: u32) -> Option<&SecretKey> {
        self.body
            .all_versions()
            .find(|v| v.version == version && v.state != KeyState::Destroyed)
            .map(|v| &v.key)
    }

    /// The wrapping cipher for `kind` records under `version`, if that version
    /// exists and is enabled, and its key is usable (enabled, not expired).
    pub fn wrapper(&self, version: u32, kind: RecordKind) -> Option<SealingKey> {
        if !self.version_usable(version) {
            return None;
        }
        self.census_wrapper(version, kind)
    }

    /// The wrapping cipher for `kind` records under `version` if the version
    /// is enabled, whatever the state of its key: for a census, which opens
    /// headers to count them by key (a disabled key's files are counted as
    /// its own, not as unreadable) and never reads file data.
    pub fn census_wrapper(&self, version: u32, kind: RecordKind) -> Option<SealingKey> {
        let v = self.body.all_versions().find(|v| v.version == version)?;
        if v.state != KeyState::Enabled {
            return None;
        }
        self.wrappers
            .get(&(version, kind == RecordKind::File))
            .cloned()
    }
}

/// Reads one stored copy of the keyring (never through a symlink, never a
/// FIFO or device planted at its name).
pub fn read_copy(cipherdir: BorrowedFd<'_>, name: &str) -> std::io::Result<Vec<u8>> {
    sys::read_regular(cipherdir, std::ffi::OsStr::new(name))
}

#[cfg(test)]
mod tests;
