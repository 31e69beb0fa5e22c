//! Keyslot kind 1, `passphrase`: the KEK sealed under Argon2id(passphrase).
//!
//! ```text
//! public parameters (28 bytes)        sealed KEK (60 bytes)
//!  0  4  Argon2id memory in KiB        0 12  nonce
//!  4  4  Argon2id passes              12 32  KEK, sealed (AES-256-GCM-SIV)
//!  8  4  Argon2id lanes               44 16  tag; AAD: SlotContext::aad
//! 12 16  salt
//! ```
//!
//! Owns: the cost floor for new passphrase slots (and the ceiling for
//! stored ones, checked before Argon2 runs), and the layout-1 passphrase KEK.
//! Must never: keep the passphrase outside a zeroizing buffer or show it.

use zeroize::Zeroizing;

use super::{
    new_salt, open_local, seal_local, KeyProvider, ProviderError, ProviderKind, SealedSlot,
    SlotContext, Unsealed,
};
use crate::crypto::{stretch_passphrase, Argon2Params, SecretKey};
use crate::format::keyring::{check_kdf_ceiling, KekSource, Slot, V1Header};

/// The `passphrase` kind.
pub const KIND: ProviderKind = ProviderKind {
    tag: 1,
    name: "passphrase",
    describe,
    unattended: |_| None,
};

const PARAMS_LEN: usize = 28;

/// A passphrase (stretched with Argon2id).
pub struct Passphrase {
    passphrase: Zeroizing<Vec<u8>>,
    params: Argon2Params,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// A passphrase; new slots use [`Argon2Params::DEFAULT`].
    pub fn new(passphrase: Zeroizing<Vec<u8>>) -> Self {
        Passphrase {
            passphrase,
            params: Argon2Params::DEFAULT,
        }
    }

    /// The Argon2id cost of slots this provider seals.
    pub fn with_params(mut self, params: Argon2Params) -> Self {
        self.params = params;
        self
    }
}

fn encode_params(p: Argon2Params, salt: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PARAMS_LEN);
    out.extend_from_slice(&p.memory_kib.to_le_bytes());
    out.extend_from_slice(&p.iterations.to_le_bytes());
    out.extend_from_slice(&p.parallelism.to_le_bytes());
    out.extend_from_slice(salt);
    out
}

fn decode_params(b: &[u8]) -> Result<(Argon2Params, [u8; 16]), ProviderError> {
    if b.len() != PARAMS_LEN {
        return Err(ProviderError::Malformed(
            "passphrase slot parameters of the wrong length".into(),
        ));
    }
    let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let p = Argon2Params {
        memory_kib: u(0),
        iterations: u(4),
        parallelism: u(8),
    };
    Ok((p, b[12..28].try_into().expect("16 bytes")))
}

fn describe(slot: &Slot) -> String {
    match decode_params(&slot.params) {
        Ok((p, _)) => format!(
            "passphrase (Argon2id {} MiB, {} passes, {} lanes)",
            p.memory_kib / 1024,
            p.iterations,
            p.parallelism
        ),
        Err(e) => e.to_string(),
    }
}

impl KeyProvider for Passphrase {
    fn kind(&self) -> &'static ProviderKind {
        &KIND
    }

    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError> {
        self.params.check()?;
        let salt = new_salt()?;
        let params = encode_params(self.params, &salt);
        let wrapping = stretch_passphrase(&self.passphrase, &salt, self.params)?;
        let sealed = seal_local(&wrapping, kek, &ctx.aad(KIND.tag, &params))?;
        Ok(SealedSlot { params, sealed })
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        let (p, salt) = decode_params(&slot.params)?;
        check_kdf_ceiling(p).map_err(|e| ProviderError::Malformed(e.to_string()))?;
        let wrapping = stretch_passphrase(&self.passphrase, &salt, p)?;
        let kek = open_local(&wrapping, &slot.sealed, &ctx.aad(KIND.tag, &slot.params))?;
        Ok(Unsealed {
            kek,
            authority: None,
        })
    }

    fn v1_kek(&self, header: &V1Header) -> Option<Result<SecretKey, ProviderError>> {
        match header.kek {
            KekSource::Passphrase(p) => {
                Some(stretch_passphrase(&self.passphrase, &header.salt, p).map_err(Into::into))
            }
            KekSource::KeyFile => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Params = Argon2Params {
        memory_kib: 8192,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn seal_unseal_and_refusals() {
        let ctx = SlotContext {
            volume_id: [3; 16],
            slot_id: 1,
        };
        let kek = SecretKey::generate().unwrap();
        let p = Passphrase::new(Zeroizing::new(b"correct horse".to_vec())).with_params(CHEAP);
        let s = p.seal(&kek, &ctx).unwrap();
        let slot = Slot {
            id: 1,
            kind: KIND.tag,
            label: String::new(),
            created: 0,
            params: s.params.clone(),
            sealed: s.sealed.clone(),
        };
        assert_eq!(p.unseal(&slot, &ctx).unwrap().kek.expose(), kek.expose());
        let wrong = Passphrase::new(Zeroizing::new(b"wrong".to_vec()));
        assert!(matches!(
            wrong.unseal(&slot, &ctx),
            Err(ProviderError::WrongSecret)
        ));
        // Another slot id (a slot copied elsewhere) does not open.
        let other = SlotContext { slot_id: 2, ..ctx };
        assert!(matches!(
            p.unseal(&slot, &other),
            Err(ProviderError::WrongSecret)
        ));
        // Weak costs are refused for new slots.
        let weak = Passphrase::new(Zeroizing::new(b"x".to_vec())).with_params(Argon2Params {
            memory_kib: 64,
            ..CHEAP
        });
        assert!(weak.seal(&kek, &ctx).is_err());
        assert!(describe(&slot).contains("8 MiB"));
        assert!(!format!("{p:?}").contains("horse"));
    }
}
