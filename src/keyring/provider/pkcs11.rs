//! Keyslot kind 4, `pkcs11`: the KEK sealed with AES-GCM by an AES-256 key
//! that never leaves a PKCS#11 token ([`crate::kmsclient::pkcs11`]).
//!
//! Public parameters: the token's `pkcs11:` URI in its canonical form
//! (token attributes, `object=` and `id=` of the key, `module-path=`, and a
//! `pin-source=` when one was given; never `pin-value=`). Sealed KEK: the
//! client's 61-byte blob, with [`SlotContext::aad`] as the caller's AAD.
//!
//! Sealing a new slot whose key does not exist yet creates it on the token
//! (sensitive, never extractable) under the URI's `object=` label, and
//! records its `id=`.
//!
//! Owns: which token and key a slot names, and how the PIN is found (the
//! caller's source first, then the slot's `pin-source=`).
//! Must never: store or show a PIN.

use super::{KeyProvider, ProviderError, ProviderKind, SealedSlot, SlotContext, Unsealed};
use crate::crypto::SecretKey;
use crate::format::keyring::Slot;
use crate::kmsclient::pkcs11::{PinSource, Pkcs11Error, Pkcs11Token, Pkcs11Uri};

/// The `pkcs11` kind.
pub const KIND: ProviderKind = ProviderKind {
    tag: 4,
    name: "pkcs11",
    describe,
    unattended,
};

fn slot_uri(slot: &Slot) -> Result<Pkcs11Uri, ProviderError> {
    std::str::from_utf8(&slot.params)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProviderError::Malformed("PKCS#11 slot URI does not parse".into()))
}

fn describe(slot: &Slot) -> String {
    match slot_uri(slot) {
        Ok(u) => u.to_string(),
        Err(e) => e.to_string(),
    }
}

fn unattended(slot: &Slot) -> Option<Box<dyn KeyProvider>> {
    let uri = slot_uri(slot).ok()?;
    uri.pin.as_ref()?;
    Some(Box::new(Pkcs11Provider { uri, pin: None }))
}

/// A key on a PKCS#11 token, as the caller names it.
#[derive(Debug, Clone)]
pub struct Pkcs11Provider {
    uri: Pkcs11Uri,
    pin: Option<PinSource>,
}

impl Pkcs11Provider {
    /// The token and key of `uri`; the PIN from `pin` if given, else from
    /// the URI (`pin-source=`/`pin-value=`), else from the slot.
    pub fn new(uri: Pkcs11Uri, pin: Option<PinSource>) -> Self {
        Pkcs11Provider { uri, pin }
    }

    /// The URI with the slot's stored attributes filled in where the
    /// caller's leaves them out (the caller's module path wins: modules
    /// live in different places on different hosts).
    fn merged(&self, stored: &Pkcs11Uri) -> Pkcs11Uri {
        let mut u = stored.clone();
        if self.uri.module_path.is_some() {
            u.module_path = self.uri.module_path.clone();
        }
        if self.uri.pin.is_some() {
            u.pin = self.uri.pin.clone();
        }
        u
    }

    fn pin(&self, uri: &Pkcs11Uri) -> Result<zeroize::Zeroizing<String>, ProviderError> {
        match self.pin.as_ref().or(uri.pin.as_ref()) {
            Some(p) => Ok(p.resolve()?),
            None => Err(ProviderError::Invalid(format!(
                "no PIN for the PKCS#11 token {}: give --pin-file or --pin-env, or pin-source= in the URI",
                uri.token.as_deref().unwrap_or("(any)")
            ))),
        }
    }
}

impl KeyProvider for Pkcs11Provider {
    fn kind(&self) -> &'static ProviderKind {
        &KIND
    }

    fn describe(&self) -> String {
        self.uri.to_string()
    }

    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError> {
        let pin = self.pin(&self.uri)?;
        let mut token = Pkcs11Token::open(
            &Pkcs11Uri {
                pin: None,
                ..self.uri.clone()
            },
            &pin,
        )
        .or_else(|e| match e {
            Pkcs11Error::KeyNotFound { .. } => Pkcs11Token::open(
                &Pkcs11Uri {
                    object: None,
                    id: None,
                    pin: None,
                    ..self.uri.clone()
                },
                &pin,
            ),
            e => Err(e),
        })?;
        let mut stored = Pkcs11Uri {
            // A literal PIN never goes into the keyring; a file or a
            // variable name may (it is what makes an unattended unlock).
            pin: match &self.uri.pin {
                Some(PinSource::Value(_)) | None => None,
                Some(p) => Some(p.clone()),
            },
            ..self.uri.clone()
        };
        if stored.object.is_none() && stored.id.is_none() {
            return Err(ProviderError::Invalid(
                "the PKCS#11 URI names no key: add object=LABEL (created on the token if missing)"
                    .into(),
            ));
        }
        if !token.has_key() {
            let label = stored.object.clone().unwrap_or_else(|| "sealfs-kek".into());
            stored.id = Some(token.generate_key(&label)?);
            stored.object = Some(label);
        }
        if stored.token.is_none() {
            stored.token = Some(token.token_label().to_string());
        }
        let params = stored.to_string().into_bytes();
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        k.copy_from_slice(kek.expose());
        let sealed = token.wrap(&k, &ctx.aad(KIND.tag, &params))?;
        Ok(SealedSlot { params, sealed })
    }

    fn matches(&self, slot: &Slot) -> bool {
        if slot.kind != KIND.tag {
            return false;
        }
        let Ok(stored) = slot_uri(slot) else {
            return false;
        };
        let same = |a: &Option<String>, b: &Option<String>| a.is_none() || a == b;
        same(&self.uri.token, &stored.token)
            && same(&self.uri.serial, &stored.serial)
            && same(&self.uri.object, &stored.object)
            && (self.uri.id.is_none() || self.uri.id == stored.id)
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        let uri = self.merged(&slot_uri(slot)?);
        let pin = self.pin(&uri)?;
        let token = Pkcs11Token::open(&Pkcs11Uri { pin: None, ..uri }, &pin)?;
        let kek = token.unwrap(&slot.sealed, &ctx.aad(KIND.tag, &slot.params))?;
        Ok(Unsealed {
            kek: SecretKey::from_bytes(*kek),
            authority: None,
        })
    }
}
