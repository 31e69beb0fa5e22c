//! A PKCS#11 token as a root of trust: an AES-256 secret key that never
//! leaves the token seals and opens the volume KEK.
//!
//! Owns: parsing `pkcs11:` URIs (RFC 7512, strict; in `uri.rs`), loading a PKCS#11
//! module (once per process and path, finalized when the last user drops
//! it), finding a token and a key, logging in with a PIN the caller
//! supplies, generating the wrapping key, and the blob framing below.
//! Must never: see a volume, write files, log or show a PIN or key bytes,
//! ask the token for key material (keys are created sensitive and
//! non-extractable; only ciphertext crosses the module boundary).
//!
//! # Mechanism
//!
//! `CKM_AES_GCM` (single-part `C_Encrypt`/`C_Decrypt`, 12-byte IV, 128-bit
//! tag) with the caller's AAD bound. SoftHSM2 2.6 offers it for encrypt and
//! decrypt (`CKM_AES_KEY_WRAP_PAD` would only wrap token objects and binds no
//! AAD). The IV comes from the OS (`getrandom`), not the token: SoftHSM2's
//! GCM takes the caller's IV, and a fresh random IV per seal is what GCM
//! needs.
//!
//! # Blob layout (version 1, 61 bytes)
//!
//! ```text
//! offset  len  field
//!      0    1  layout version = 0x01
//!      1   12  GCM IV (random)
//!     13   32  AES-256-GCM ciphertext of the 32-byte KEK
//!     45   16  GCM tag
//! ```
//!
//! The AAD handed to the token is `"sealfs/pkcs11-kek/v1" || 0x00 || aad`,
//! so a blob only opens under the same caller AAD and layout version.
//!
//! # URI
//!
//! Path attributes: `token`, `manufacturer`, `model`, `serial`, `slot-id`
//! (which token), `object`, `id` (which key), `type` (only `secret-key`).
//! Query attributes: `module-path`, `pin-source` (a file path, a `file:`
//! URI, or `env:NAME`, the last a sealfs extension), `pin-value`. Values are
//! percent-decoded; any other attribute, a repeated one, or a bad escape is
//! refused.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::{Zeroize, Zeroizing};

use super::SecretSource;

mod uri;
pub use uri::{Pkcs11Uri, UriError};

/// Where the PIN comes from (file, environment variable or literal).
pub type PinSource = SecretSource;

/// The layout version byte of a sealed KEK blob.
pub const BLOB_VERSION: u8 = 1;
/// Length of a version-1 blob.
pub const BLOB_LEN: usize = 1 + IV_LEN + 32 + TAG_LEN;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"sealfs/pkcs11-kek/v1\0";

/// Where Debian/Ubuntu install SoftHSM2's module (package `softhsm2`).
pub const SOFTHSM2_MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The first SoftHSM2 module found in [`SOFTHSM2_MODULE_PATHS`].
pub fn find_softhsm2_module() -> Option<PathBuf> {
    SOFTHSM2_MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

// ---------------------------------------------------------------- errors

/// What went wrong with the token. Never contains a PIN or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The URI could not be parsed.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// The module is missing, not a PKCS#11 module, or failed to initialise.
    #[error("cannot use the PKCS#11 module {path}: {reason}; install it (e.g. apt-get install softhsm2) or fix module-path= in the URI")]
    ModuleUnavailable {
        /// The module path (or a placeholder when none was given).
        path: String,
        /// What failed.
        reason: String,
    },
    /// No token matches the URI.
    #[error("no PKCS#11 token matches {selector}; check that the token is present and initialised (softhsm2-util --show-slots / pkcs11-tool -L) and the token= label")]
    TokenNotFound {
        /// What was looked for.
        selector: String,
    },
    /// More than one token or key matches.
    #[error("more than one PKCS#11 {what} matches {selector}; make the URI more specific (serial=, id=)")]
    Ambiguous {
        /// "token" or "key".
        what: &'static str,
        /// What was looked for.
        selector: String,
    },
    /// CKR_PIN_INCORRECT (or a PIN of an impossible length).
    #[error("the PIN for PKCS#11 token {token:?} is incorrect; check the PIN source (repeated failures may lock the token)")]
    PinIncorrect {
        /// Token label.
        token: String,
    },
    /// CKR_PIN_LOCKED / CKR_PIN_EXPIRED / user PIN not initialised.
    #[error("the user PIN of PKCS#11 token {token:?} is locked, expired or not set; the token's security officer must reset it (e.g. softhsm2-util / pkcs11-tool --init-pin)")]
    PinLocked {
        /// Token label.
        token: String,
    },
    /// No key matches the URI.
    #[error("no AES secret key {selector} on PKCS#11 token {token:?}; check object=/id= in the URI, or create one (sealfs init with this token)")]
    KeyNotFound {
        /// Token label.
        token: String,
        /// What was looked for.
        selector: String,
    },
    /// A key with that label already exists (generate_key).
    #[error("PKCS#11 token {token:?} already holds a key labelled {label:?}; pick another label or use the existing key")]
    KeyExists {
        /// Token label.
        token: String,
        /// The label.
        label: String,
    },
    /// The token went away or reported a device error (function: code).
    #[error("PKCS#11 token unavailable ({0}); reinsert the token / check the HSM and retry")]
    TokenUnavailable(String),
    /// The token does not offer the mechanism sealfs needs.
    #[error("PKCS#11 token {token:?} does not support {mechanism} for this key; use a token with AES-GCM (SoftHSM2 >= 2.2, most HSMs) and an AES-256 key allowed to encrypt and decrypt")]
    MechanismUnsupported {
        /// Token label.
        token: String,
        /// The mechanism.
        mechanism: &'static str,
    },
    /// The blob did not open: tampered, truncated, another key or AAD.
    #[error("the sealed KEK did not open on PKCS#11 token {token:?} ({reason}): it was changed, belongs to another key, or was sealed for another volume; restore the keyslot from backup or use another keyslot")]
    UnwrapFailed {
        /// Token label.
        token: String,
        /// Why, without secrets.
        reason: &'static str,
    },
    /// Random bytes for the IV could not be had from the OS.
    #[error("the operating system's random generator failed ({0}); retry")]
    Random(String),
    /// Any other PKCS#11 failure (function: code).
    #[error("PKCS#11 call failed ({0}); see the token's logs")]
    Other(String),
}

fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// Maps errors common to every call; `token` names the token in messages.
fn map_err(e: CkError, token: &str) -> Pkcs11Error {
    let t = token.to_owned();
    match &e {
        CkError::Pkcs11(rv, function) => match rv {
            RvError::PinIncorrect | RvError::PinLenRange => Pkcs11Error::PinIncorrect { token: t },
            RvError::PinLocked | RvError::PinExpired | RvError::UserPinNotInitialized => {
                Pkcs11Error::PinLocked { token: t }
            }
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid => {
                Pkcs11Error::TokenUnavailable(format!("{function}: {rv:?}"))
            }
            _ => Pkcs11Error::Other(format!("{function}: {rv:?}")),
        },
        other => Pkcs11Error::Other(other.to_string()),
    }
}

// ---------------------------------------------------------------- module registry

/// One loaded, initialised module, shared by every token opened on it in
/// this process; finalized when the last [`ModuleRef`] drops, so the next
/// load initialises afresh (SoftHSM2 reads `SOFTHSM2_CONF` then).
struct ModuleRef {
    path: PathBuf,
    ctx: Pkcs11,
}

/// Loaded modules: context, users, whether this registry initialised it.
type Registry = HashMap<PathBuf, (Pkcs11, usize, bool)>;

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

impl ModuleRef {
    fn load(path: &Path) -> Result<ModuleRef, Pkcs11Error> {
        let unavailable = |reason: String| Pkcs11Error::ModuleUnavailable {
            path: path.display().to_string(),
            reason,
        };
        let canon = path
            .canonicalize()
            .map_err(|e| unavailable(format!("not found ({e})")))?;
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ctx, n, _)) = reg.get_mut(&canon) {
            *n += 1;
            return Ok(ModuleRef {
                path: canon,
                ctx: ctx.clone(),
            });
        }
        let ctx = Pkcs11::new(&canon).map_err(|e| unavailable(format!("cannot load it ({e})")))?;
        let owned = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            // Another library in this process initialised it: share it,
            // and leave finalizing to that library.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(e) => return Err(unavailable(format!("C_Initialize failed ({e})"))),
        };
        reg.insert(canon.clone(), (ctx.clone(), 1, owned));
        Ok(ModuleRef { path: canon, ctx })
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        let last = match reg.get_mut(&self.path) {
            Some((_, n, _)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last {
            if let Some((ctx, _, true)) = reg.remove(&self.path) {
                let _ = ctx.finalize();
            }
        }
    }
}

// ---------------------------------------------------------------- token

/// A logged-in session on one token, with the key the URI names (if any).
pub struct Pkcs11Token {
    // Field order matters: the session closes before the module finalizes.
    session: Session,
    slot: Slot,
    label: String,
    key: Option<ObjectHandle>,
    _module: ModuleRef,
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Token")
            .field("token", &self.label)
            .field("slot", &self.slot.id())
            .field("key_selected", &self.key.is_some())
            .finish()
    }
}

impl Pkcs11Token {
    /// Loads the URI's module, finds its token, logs in as the user with
    /// `pin`, and selects the key the URI names (`object=`/`id=`), if it
    /// names one; a URI without a key is enough for [`generate_key`](Self::generate_key).
    pub fn open(uri: &Pkcs11Uri, pin: &str) -> Result<Pkcs11Token, Pkcs11Error> {
        let path = uri
            .module_path
            .as_deref()
            .ok_or_else(|| Pkcs11Error::ModuleUnavailable {
                path: "(none)".into(),
                reason: "the URI has no module-path=".into(),
            })?;
        let module = ModuleRef::load(path)?;
        let selector = uri.token_selector();
        let slots = module
            .ctx
            .get_slots_with_initialized_token()
            .map_err(|e| map_err(e, &selector))?;
        let mut found = Vec::new();
        for slot in slots {
            let info = match module.ctx.get_token_info(slot) {
                Ok(info) => info,
                Err(e) if rv_of(&e) == Some(RvError::TokenNotPresent) => continue,
                Err(e) => return Err(map_err(e, &selector)),
            };
            let matches = uri.token.as_deref().is_none_or(|t| t == info.label())
                && uri
                    .serial
                    .as_deref()
                    .is_none_or(|t| t == info.serial_number())
                && uri
                    .manufacturer
                    .as_deref()
                    .is_none_or(|t| t == info.manufacturer_id())
                && uri.model.as_deref().is_none_or(|t| t == info.model())
                && uri.slot_id.is_none_or(|id| id == slot.id());
            if matches {
                found.push((slot, info.label().to_owned()));
            }
        }
        let (slot, label) = match found.len() {
            0 => return Err(Pkcs11Error::TokenNotFound { selector }),
            1 => found.remove(0),
            _ => {
                return Err(Pkcs11Error::Ambiguous {
                    what: "token",
                    selector,
                })
            }
        };
        let session = module
            .ctx
            .open_rw_session(slot)
            .map_err(|e| map_err(e, &label))?;
        let auth = AuthPin::new(pin.into());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(map_err(e, &label)),
        }
        let mut token = Pkcs11Token {
            session,
            slot,
            label,
            key: None,
            _module: module,
        };
        if uri.object.is_some() || uri.id.is_some() {
            token.key = Some(token.find_key(uri.object.as_deref(), uri.id.as_deref())?);
        }
        Ok(token)
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.label
    }

    /// Whether a key is selected (named by the URI, or just generated).
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn find_key(
        &self,
        label: Option<&str>,
        id: Option<&[u8]>,
    ) -> Result<ObjectHandle, Pkcs11Error> {
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ];
        if let Some(l) = label {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = id {
            template.push(Attribute::Id(id.to_vec()));
        }
        let found = self
            .session
            .find_objects(&template)
            .map_err(|e| map_err(e, &self.label))?;
        let selector = Pkcs11Uri {
            object: label.map(Into::into),
            id: id.map(Into::into),
            ..Default::default()
        }
        .to_string();
        match found.len() {
            0 => Err(Pkcs11Error::KeyNotFound {
                token: self.label.clone(),
                selector,
            }),
            1 => Ok(found[0]),
            _ => Err(Pkcs11Error::Ambiguous {
                what: "key",
                selector,
            }),
        }
    }

    /// Creates an AES-256 key on the token labelled `label`, with a random
    /// 16-byte `CKA_ID` (returned): persistent, private, sensitive,
    /// non-extractable, allowed only to encrypt and decrypt. Selects it for
    /// [`wrap`](Self::wrap)/[`unwrap`](Self::unwrap). Refuses a label that
    /// is already taken.
    pub fn generate_key(&mut self, label: &str) -> Result<Vec<u8>, Pkcs11Error> {
        match self.find_key(Some(label), None) {
            Err(Pkcs11Error::KeyNotFound { .. }) => {}
            Ok(_) | Err(Pkcs11Error::Ambiguous { .. }) => {
                return Err(Pkcs11Error::KeyExists {
                    token: self.label.clone(),
                    label: label.into(),
                })
            }
            Err(e) => return Err(e),
        }
        let mut id = vec![0u8; 16];
        getrandom::fill(&mut id).map_err(|e| Pkcs11Error::Random(e.to_string()))?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let key = self
            .session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| match rv_of(&e) {
                Some(RvError::MechanismInvalid) => Pkcs11Error::MechanismUnsupported {
                    token: self.label.clone(),
                    mechanism: "CKM_AES_KEY_GEN",
                },
                _ => map_err(e, &self.label),
            })?;
        self.key = Some(key);
        Ok(id)
    }

    /// Whether the selected key is sensitive and was never extractable.
    pub fn key_is_protected(&self) -> Result<bool, Pkcs11Error> {
        let key = self.key()?;
        let attrs = self
            .session
            .get_attributes(
                key,
                &[AttributeType::Sensitive, AttributeType::NeverExtractable],
            )
            .map_err(|e| map_err(e, &self.label))?;
        let yes = |t: AttributeType| {
            attrs.iter().any(|a| {
                a.attribute_type() == t
                    && matches!(
                        a,
                        Attribute::Sensitive(true) | Attribute::NeverExtractable(true)
                    )
            })
        };
        Ok(yes(AttributeType::Sensitive) && yes(AttributeType::NeverExtractable))
    }

    fn key(&self) -> Result<ObjectHandle, Pkcs11Error> {
        self.key.ok_or_else(|| Pkcs11Error::KeyNotFound {
            token: self.label.clone(),
            selector: "(the URI names none: add object= or id=)".into(),
        })
    }

    fn mechanism_error(&self, e: CkError) -> Pkcs11Error {
        match rv_of(&e) {
            Some(
                RvError::MechanismInvalid
                | RvError::MechanismParamInvalid
                | RvError::KeyTypeInconsistent
                | RvError::KeyFunctionNotPermitted,
            ) => Pkcs11Error::MechanismUnsupported {
                token: self.label.clone(),
                mechanism: "CKM_AES_GCM",
            },
            _ => map_err(e, &self.label),
        }
    }

    /// Seals the 32-byte KEK under the token's key with AES-GCM, binding
    /// `aad`; returns the version-1 blob (see the module docs).
    pub fn wrap(&self, plaintext_kek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let key = self.key()?;
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(|e| Pkcs11Error::Random(e.to_string()))?;
        let full_aad = token_aad(aad);
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, &full_aad, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| map_err(e, &self.label))?;
        let sealed = self
            .session
            .encrypt(&Mechanism::AesGcm(params), key, plaintext_kek)
            .map_err(|e| self.mechanism_error(e))?;
        if sealed.len() != 32 + TAG_LEN {
            let n = sealed.len();
            return Err(Pkcs11Error::Other(format!(
                "C_Encrypt: output of {n} bytes"
            )));
        }
        let mut blob = Vec::with_capacity(BLOB_LEN);
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&iv);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens a blob made by [`wrap`](Self::wrap) with the same `aad`.
    pub fn unwrap(&self, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<[u8; 32]>, Pkcs11Error> {
        let key = self.key()?;
        let fail = |reason| Pkcs11Error::UnwrapFailed {
            token: self.label.clone(),
            reason,
        };
        if blob.len() != BLOB_LEN {
            return Err(fail("wrong length for a sealfs PKCS#11 blob"));
        }
        if blob[0] != BLOB_VERSION {
            return Err(fail("unknown blob layout version"));
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&blob[1..1 + IV_LEN]);
        let full_aad = token_aad(aad);
        let params = GcmParams::new(&mut iv, &full_aad, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| map_err(e, &self.label))?;
        let mut plain =
            match self
                .session
                .decrypt(&Mechanism::AesGcm(params), key, &blob[1 + IV_LEN..])
            {
                Ok(p) => Zeroizing::new(p),
                // SoftHSM2 2.6 answers a failed GCM tag check with
                // CKR_GENERAL_ERROR from C_Decrypt (the spec says
                // CKR_ENCRYPTED_DATA_INVALID, or CKR_AEAD_DECRYPT_FAILED in 3.x).
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError
                    | RvError::FunctionFailed,
                    Function::Decrypt,
                )) => return Err(fail("authentication failed")),
                Err(e) => return Err(self.mechanism_error(e)),
            };
        if plain.len() != 32 {
            plain.zeroize();
            return Err(fail("wrong plaintext length"));
        }
        let mut kek = Zeroizing::new([0u8; 32]);
        kek.copy_from_slice(&plain);
        Ok(kek)
    }
}

fn token_aad(aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(AAD_DOMAIN.len() + aad.len());
    v.extend_from_slice(AAD_DOMAIN);
    v.extend_from_slice(aad);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do_and_hold_no_secret() {
        let e = Pkcs11Error::PinIncorrect { token: "T".into() };
        assert!(e.to_string().contains("check the PIN source"));
        let e = Pkcs11Error::UnwrapFailed {
            token: "T".into(),
            reason: "authentication failed",
        };
        assert!(e.to_string().contains("restore the keyslot"));
    }
}
