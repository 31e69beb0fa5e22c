//! Key providers: the roots of trust that hold a volume's key-encryption
//! key (KEK), one keyslot each. age's `Identity`/`Recipient` are the model:
//! a [`KeyProvider`] seals the KEK into a new slot (its public parameters
//! and its sealed blob, both stored in the keyring header) and opens a slot
//! it matches.
//!
//! | tag | kind | file | public parameters | sealed KEK |
//! |---|---|---|---|---|
//! | 1 | `passphrase` | [`passphrase`] | Argon2id cost + salt | AES-256-GCM-SIV under Argon2id(passphrase) |
//! | 2 | `key-file` | [`keyfile`] | salt | AES-256-GCM-SIV under HKDF(32-byte file) |
//! | 3 | `recovery-key` | [`recovery`] | salt | AES-256-GCM-SIV under HKDF(recovery key) |
//! | 4 | `pkcs11` | [`pkcs11`] | the token's `pkcs11:` URI (never a PIN) | AES-GCM on the token (61-byte blob) |
//! | 5 | `transit` | [`transit`] | server, mounts, key, KV anchor path | `vault:vN:…` from Transit |
//!
//! Adding an unlock method: one file here (its [`ProviderKind`], a type
//! implementing [`KeyProvider`]), and one line in [`KINDS`].
//!
//! Owns: the trait, the registry of kinds, the slot AAD, and the errors of
//! this layer ([`ProviderError`]).
//! Must never: put a secret (passphrase, key bytes, PIN, token) into a
//! description, an error, `Debug` output or a log line; or store a secret
//! in a slot's public parameters.

pub mod keyfile;
pub mod passphrase;
pub mod pkcs11;
pub mod recovery;
pub mod transit;

use std::fmt;
use std::sync::Arc;

use crate::crypto::{CryptoError, SecretKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::format::keyring::{Slot, V1Header};
use crate::kmsclient::pkcs11::Pkcs11Error;
use crate::kmsclient::transit::TransitError;
use crate::kmsclient::SecretSourceError;

/// Static facts about one kind of provider, found by its tag in [`KINDS`].
pub struct ProviderKind {
    /// The tag stored in each slot entry.
    pub tag: u8,
    /// Its name in messages, `keyslot list` and the control protocol.
    pub name: &'static str,
    /// Describes a slot from its public parameters alone (never a secret).
    pub describe: fn(&Slot) -> String,
    /// A provider that can open `slot` with nobody asked (a PIN source in
    /// the slot's URI, a Transit token in the environment), if there is one.
    pub unattended: fn(&Slot) -> Option<Box<dyn KeyProvider>>,
}

impl fmt::Debug for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderKind({})", self.name)
    }
}

/// The registry: every kind this build knows.
pub const KINDS: &[&ProviderKind] = &[
    &passphrase::KIND,
    &keyfile::KIND,
    &recovery::KIND,
    &pkcs11::KIND,
    &transit::KIND,
];

/// The kind with this tag.
pub fn kind(tag: u8) -> Option<&'static ProviderKind> {
    KINDS.iter().copied().find(|k| k.tag == tag)
}

/// The kind called `name` (`passphrase`, `key-file`, …).
pub fn kind_named(name: &str) -> Option<&'static ProviderKind> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// A slot's kind name, or `unknown(N)`.
pub fn kind_name(tag: u8) -> String {
    kind(tag).map_or_else(|| format!("unknown({tag})"), |k| k.name.to_string())
}

/// A slot described for people: its kind and its public parameters.
pub fn describe_slot(slot: &Slot) -> String {
    match kind(slot.kind) {
        Some(k) => (k.describe)(slot),
        None => format!("unknown provider kind {}", slot.kind),
    }
}

/// What binds a slot's sealed KEK to its place: the volume and the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotContext {
    /// The volume id.
    pub volume_id: [u8; 16],
    /// The slot id.
    pub slot_id: u32,
}

impl SlotContext {
    /// The AAD of a slot's sealed KEK: `"sealfs:keyslot:v2"` ‖ volume id ‖
    /// slot id (u32 LE) ‖ kind tag ‖ public parameters.
    pub fn aad(&self, kind: u8, params: &[u8]) -> Vec<u8> {
        let mut a = Vec::with_capacity(17 + 16 + 4 + 1 + params.len());
        a.extend_from_slice(b"sealfs:keyslot:v2");
        a.extend_from_slice(&self.volume_id);
        a.extend_from_slice(&self.slot_id.to_le_bytes());
        a.push(kind);
        a.extend_from_slice(params);
        a
    }

    /// The Transit `context`: volume id ‖ slot id (u32 LE).
    pub fn transit_context(&self) -> [u8; 20] {
        let mut c = [0u8; 20];
        c[..16].copy_from_slice(&self.volume_id);
        c[16..].copy_from_slice(&self.slot_id.to_le_bytes());
        c
    }
}

/// A new slot's provider-defined bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSlot {
    /// Public parameters.
    pub params: Vec<u8>,
    /// The sealed KEK.
    pub sealed: Vec<u8>,
}

/// What opening a slot gives: the KEK, and for a KMS slot a handle that
/// keeps asking the KMS (key state, the generation anchor) while mounted.
pub struct Unsealed {
    /// The KEK.
    pub kek: SecretKey,
    /// The KMS behind the slot, if it has authority of its own.
    pub authority: Option<Arc<dyn KmsAuthority>>,
}

impl fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealed")
            .field("authority", &self.authority.is_some())
            .finish_non_exhaustive()
    }
}

/// A root of trust for a volume's KEK. See the [module docs](self).
pub trait KeyProvider: Send + Sync {
    /// Its kind.
    fn kind(&self) -> &'static ProviderKind;

    /// What it is, for messages (e.g. the token's URI without PIN); never
    /// a secret.
    fn describe(&self) -> String {
        self.kind().name.to_string()
    }

    /// Seals `kek` into a new slot bound to `ctx`.
    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError>;

    /// Whether this provider is meant for `slot`: the same kind, and where
    /// the parameters name a token, key or server, the same one. A
    /// passphrase matches every passphrase slot (each is tried).
    fn matches(&self, slot: &Slot) -> bool {
        slot.kind == self.kind().tag
    }

    /// Opens `slot`'s sealed KEK. [`ProviderError::WrongSecret`] when the
    /// secret does not open it.
    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError>;

    /// For a layout-1 keyring (whose KEK is the stretched secret itself):
    /// the KEK, if this provider is of a kind layout 1 knows.
    fn v1_kek(&self, _header: &V1Header) -> Option<Result<SecretKey, ProviderError>> {
        None
    }

    /// Re-seals `slot`'s KEK under the newest version of the provider's own
    /// key, without the KEK leaving it (Transit `rewrap`); `None` for kinds
    /// that have nothing to rewrap.
    fn rewrap(&self, _slot: &Slot, _ctx: &SlotContext) -> Option<Result<Vec<u8>, ProviderError>> {
        None
    }
}

/// A set of providers to try, in order: what unlocks a volume.
pub trait Unlocker: Sync {
    /// The providers.
    fn providers(&self) -> Vec<&dyn KeyProvider>;

    /// Where the keyring is, for a volume that keeps it outside CIPHERDIR
    /// (feature `external-keyring`; gocryptfs's `-config`): a directory
    /// holding `sealfs.keyring` and `sealfs.keyring.bak`. None: in CIPHERDIR.
    fn keyring_dir(&self) -> Option<&std::path::Path> {
        None
    }
}

impl<P: KeyProvider> Unlocker for P {
    fn providers(&self) -> Vec<&dyn KeyProvider> {
        vec![self]
    }
}

/// Several providers (from the command line, or found unattended).
#[derive(Default)]
pub struct Unlock {
    providers: Vec<Box<dyn KeyProvider>>,
    keyring_dir: Option<std::path::PathBuf>,
}

impl fmt::Debug for Unlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| p.describe()))
            .finish()
    }
}

impl Unlock {
    /// No provider yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a provider (tried in the order added).
    pub fn with(mut self, p: impl KeyProvider + 'static) -> Self {
        self.providers.push(Box::new(p));
        self
    }

    /// Adds a boxed provider.
    pub fn push(&mut self, p: Box<dyn KeyProvider>) {
        self.providers.push(p);
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Looks for the keyring in `dir` instead of CIPHERDIR (see
    /// [`Unlocker::keyring_dir`]).
    pub fn set_keyring_dir(&mut self, dir: Option<std::path::PathBuf>) {
        self.keyring_dir = dir;
    }
}

impl Unlocker for Unlock {
    fn providers(&self) -> Vec<&dyn KeyProvider> {
        self.providers.iter().map(|p| p.as_ref()).collect()
    }

    fn keyring_dir(&self) -> Option<&std::path::Path> {
        self.keyring_dir.as_deref()
    }
}

/// The providers that can open some slot of `slots` unattended (see
/// [`ProviderKind::unattended`]), in slot order.
pub fn unattended(slots: &[Slot]) -> Unlock {
    let mut u = Unlock::new();
    for s in slots {
        if let Some(p) = kind(s.kind).and_then(|k| (k.unattended)(s)) {
            u.push(p);
        }
    }
    u
}

/// What a KMS behind a slot said when last asked (for `ctl status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KmsSeen {
    /// The provider kind (`transit`).
    pub provider: String,
    /// The slot.
    pub slot: u32,
    /// Where (server and key; never a token).
    pub target: String,
    /// `ok`, `key_disabled`, `key_not_found`, `permission_denied`,
    /// `unreachable` or `error`.
    pub state: String,
    /// The KMS's own words when not `ok`.
    pub message: Option<String>,
    /// When it was asked, seconds since the epoch.
    pub checked_at: u64,
}

/// A KMS with authority over a mounted volume: the key state is its, and
/// it keeps the keyring generation outside the cipher dir. Every call is
/// bounded in time; none is ever made on the I/O path.
pub trait KmsAuthority: Send + Sync + fmt::Debug {
    /// Asks the KMS whether this slot still unlocks (key enabled, token
    /// valid, ciphertext version allowed), and remembers the answer.
    fn check(&self) -> Result<(), ProviderError>;
    /// The last answer of [`KmsAuthority::check`] (or of the unlock).
    fn last_seen(&self) -> KmsSeen;
    /// The keyring generation recorded in the KMS, if any.
    fn anchored_generation(&self) -> Result<Option<u32>, ProviderError>;
    /// Records `generation` in the KMS (never lowers it).
    fn anchor_generation(&self, generation: u32) -> Result<(), ProviderError>;
}

/// Errors of the provider layer. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The secret does not open this slot (wrong passphrase, key file or
    /// recovery key; or the slot was tampered with).
    #[error("wrong secret for this keyslot")]
    WrongSecret,
    /// The slot's public parameters or sealed bytes do not parse.
    #[error("keyslot is malformed: {0}")]
    Malformed(String),
    /// The provider cannot be used as asked (a missing option, a weak
    /// parameter, a recovery key that does not parse).
    #[error("{0}")]
    Invalid(String),
    /// The PKCS#11 token failed.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// The Transit server failed.
    #[error(transparent)]
    Transit(#[from] TransitError),
    /// A PIN or token could not be read.
    #[error(transparent)]
    Secret(#[from] SecretSourceError),
    /// Randomness or key derivation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Seals `kek` under `wrapping` for a local slot: nonce ‖ sealed KEK ‖ tag
/// (60 bytes), AAD from [`SlotContext::aad`].
pub(crate) fn seal_local(
    wrapping: &SecretKey,
    kek: &SecretKey,
    aad: &[u8],
) -> Result<Vec<u8>, ProviderError> {
    let (nonce, ct, tag) = wrapping.cipher().wrap_key(kek, aad)?;
    let mut out = Vec::with_capacity(NONCE_LEN + KEY_LEN + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens what [`seal_local`] made.
pub(crate) fn open_local(
    wrapping: &SecretKey,
    sealed: &[u8],
    aad: &[u8],
) -> Result<SecretKey, ProviderError> {
    if sealed.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
        return Err(ProviderError::Malformed(
            "sealed KEK of the wrong length".into(),
        ));
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("12 bytes");
    let ct: [u8; KEY_LEN] = sealed[NONCE_LEN..NONCE_LEN + KEY_LEN]
        .try_into()
        .expect("32 bytes");
    let tag: [u8; TAG_LEN] = sealed[NONCE_LEN + KEY_LEN..].try_into().expect("16 bytes");
    wrapping
        .cipher()
        .unwrap_key(&nonce, &ct, &tag, aad)
        .map_err(|_| ProviderError::WrongSecret)
}

/// Seals `kek` for a slot whose wrapping key is derived from a 32-byte
/// `secret` (a key file, a recovery key) with a fresh salt and `label`:
/// the salt is the slot's public parameters.
pub(crate) fn seal_with_derived_key(
    secret: &[u8],
    label: &[u8],
    kind: &ProviderKind,
    kek: &SecretKey,
    ctx: &SlotContext,
) -> Result<SealedSlot, ProviderError> {
    let salt = new_salt()?;
    let wrapping = crate::crypto::derive_key(secret, &salt, label);
    let sealed = seal_local(&wrapping, kek, &ctx.aad(kind.tag, &salt))?;
    Ok(SealedSlot {
        params: salt.to_vec(),
        sealed,
    })
}

/// Opens what [`seal_with_derived_key`] made.
pub(crate) fn unseal_with_derived_key(
    secret: &[u8],
    label: &[u8],
    kind: &ProviderKind,
    slot: &Slot,
    ctx: &SlotContext,
) -> Result<Unsealed, ProviderError> {
    let salt: [u8; 16] = slot.params.as_slice().try_into().map_err(|_| {
        ProviderError::Malformed(format!("{} slot parameters are not a salt", kind.name))
    })?;
    let wrapping = crate::crypto::derive_key(secret, &salt, label);
    let kek = open_local(&wrapping, &slot.sealed, &ctx.aad(kind.tag, &slot.params))?;
    Ok(Unsealed {
        kek,
        authority: None,
    })
}

/// A fresh 16-byte salt.
pub(crate) fn new_salt() -> Result<[u8; 16], ProviderError> {
    let mut s = [0u8; 16];
    crate::crypto::fill_random(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_tags_and_names_are_unique() {
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                assert_ne!(a.tag, b.tag);
                assert_ne!(a.name, b.name);
            }
            assert_eq!(kind(a.tag).unwrap().name, a.name);
            assert_eq!(kind_named(a.name).unwrap().tag, a.tag);
        }
        assert!(kind(0).is_none());
        assert_eq!(kind_name(200), "unknown(200)");
    }

    #[test]
    fn no_provider_shows_its_secret_in_debug_or_describe() {
        use crate::kmsclient::transit::TokenSource;
        use crate::kmsclient::SecretSource;
        use zeroize::Zeroizing;
        let secret = "s3cr3t-VALUE";
        let pass = passphrase::Passphrase::new(Zeroizing::new(secret.as_bytes().to_vec()));
        let uri: crate::kmsclient::pkcs11::Pkcs11Uri =
            format!("pkcs11:token=t;object=k?pin-value={secret}")
                .parse()
                .unwrap();
        let p11 = pkcs11::Pkcs11Provider::new(
            uri,
            Some(SecretSource::Value(Zeroizing::new(secret.into()))),
        );
        let tr = transit::TransitProvider::new(TokenSource::Token(SecretSource::Value(
            Zeroizing::new(secret.into()),
        )))
        .address("http://127.0.0.1:1")
        .key("k");
        let rk = recovery::RecoveryKey::generate().unwrap();
        let printed = rk.display();
        let all: Vec<(&dyn KeyProvider, String)> = vec![
            (&pass, format!("{pass:?}")),
            (&p11, format!("{p11:?}")),
            (&tr, format!("{tr:?}")),
            (&rk, format!("{rk:?}")),
        ];
        for (p, dbg) in all {
            let text = format!("{dbg} {}", p.describe());
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains(&printed[..9]), "{text}");
        }
        let mut u = Unlock::new();
        u.push(Box::new(pass));
        assert!(!format!("{u:?}").contains(secret));
    }

    #[test]
    fn slot_aad_binds_volume_slot_kind_and_params() {
        let c = SlotContext {
            volume_id: [1; 16],
            slot_id: 2,
        };
        let a = c.aad(1, b"p");
        assert_ne!(a, SlotContext { slot_id: 3, ..c }.aad(1, b"p"));
        assert_ne!(a, c.aad(2, b"p"));
        assert_ne!(a, c.aad(1, b"q"));
        let k = SecretKey::generate().unwrap();
        let w = SecretKey::generate().unwrap();
        let sealed = seal_local(&w, &k, &a).unwrap();
        assert_eq!(open_local(&w, &sealed, &a).unwrap().expose(), k.expose());
        assert!(matches!(
            open_local(&w, &sealed, &c.aad(1, b"q")),
            Err(ProviderError::WrongSecret)
        ));
    }
}
