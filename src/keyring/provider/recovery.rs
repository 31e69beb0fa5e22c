//! Keyslot kind 3, `recovery-key`: a random 32-byte key printed once (at
//! `sealfs init --recovery-key` or `keyslot add … --new-recovery-key`),
//! typed back when every other slot is lost.
//!
//! Printed form: the 32 key bytes and a 3-byte checksum (the first bytes of
//! SHA-256(`"sealfs recovery key v1"` ‖ key)), in RFC 4648 base32 (56
//! characters), in 14 groups of 4 joined by `-`. Typing it back ignores
//! case, spaces and dashes; a mistyped character fails the checksum with a
//! message saying so (rather than a wrong-key error).
//!
//! Slot: public parameters = a 16-byte salt; sealed KEK = nonce ‖ sealed
//! KEK ‖ tag (60 bytes) under `HKDF(ikm = recovery key, salt, "sealfs v2
//! keyslot recovery key")`, AAD [`SlotContext::aad`]. The key is random, so
//! no slow KDF is needed.
//!
//! Owns: generating, printing and parsing recovery keys.
//! Must never: keep a recovery key outside zeroizing buffers, or show it
//! anywhere but the one place the caller prints it.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    seal_with_derived_key, unseal_with_derived_key, KeyProvider, ProviderError, ProviderKind,
    SealedSlot, SlotContext, Unsealed,
};
use crate::crypto::SecretKey;
use crate::format::keyring::Slot;

/// The `recovery-key` kind.
pub const KIND: ProviderKind = ProviderKind {
    tag: 3,
    name: "recovery-key",
    describe: |_| "recovery key".to_string(),
    unattended: |_| None,
};

const LABEL: &[u8] = b"sealfs v2 keyslot recovery key";
const CHECK_LABEL: &[u8] = b"sealfs recovery key v1";
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Characters of a printed recovery key, without dashes.
pub const PRINTED_CHARS: usize = 56;

/// A recovery key.
pub struct RecoveryKey {
    key: SecretKey,
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

fn checksum(key: &[u8; 32]) -> [u8; 3] {
    let d = Sha256::new()
        .chain_update(CHECK_LABEL)
        .chain_update(key)
        .finalize();
    [d[0], d[1], d[2]]
}

impl RecoveryKey {
    /// A fresh random recovery key.
    pub fn generate() -> Result<Self, ProviderError> {
        Ok(RecoveryKey {
            key: SecretKey::generate()?,
        })
    }

    /// The printed form (14 groups of 4 base32 characters). Show it once.
    pub fn display(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 35]);
        bytes[..32].copy_from_slice(self.key.expose());
        bytes[32..].copy_from_slice(&checksum(self.key.expose()));
        let mut out = Zeroizing::new(String::with_capacity(PRINTED_CHARS + 13));
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &b in bytes.iter() {
            acc = (acc << 8) | b as u64;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                if n > 0 && n % 4 == 0 {
                    out.push('-');
                }
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
                n += 1;
            }
        }
        debug_assert_eq!(n, PRINTED_CHARS);
        out
    }

    /// Parses a printed recovery key (case, spaces and dashes ignored).
    pub fn parse(text: &str) -> Result<Self, ProviderError> {
        let mut chars = Zeroizing::new(Vec::with_capacity(PRINTED_CHARS));
        for c in text.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let u = c.to_ascii_uppercase() as u32;
            match ALPHABET.iter().position(|&a| a as u32 == u) {
                Some(v) => chars.push(v as u8),
                None => {
                    return Err(ProviderError::Invalid(
                        "not a recovery key: it has a character outside A-Z and 2-7".into(),
                    ))
                }
            }
        }
        if chars.len() != PRINTED_CHARS {
            return Err(ProviderError::Invalid(format!(
                "not a recovery key: {} characters, expected {PRINTED_CHARS} (14 groups of 4)",
                chars.len()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 35]);
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut i = 0;
        for &v in chars.iter() {
            acc = (acc << 5) | v as u64;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[i] = (acc >> bits) as u8;
                i += 1;
            }
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes[..32]);
        if checksum(&key) != bytes[32..35] {
            return Err(ProviderError::Invalid(
                "the recovery key's checksum does not match: a character is mistyped".into(),
            ));
        }
        Ok(RecoveryKey {
            key: SecretKey::from_bytes(*key),
        })
    }
}

impl KeyProvider for RecoveryKey {
    fn kind(&self) -> &'static ProviderKind {
        &KIND
    }

    fn describe(&self) -> String {
        "recovery key".into()
    }

    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError> {
        seal_with_derived_key(self.key.expose(), LABEL, &KIND, kek, ctx)
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        unseal_with_derived_key(self.key.expose(), LABEL, &KIND, slot, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_form_round_trips_and_catches_typos() {
        let k = RecoveryKey::generate().unwrap();
        let text = k.display();
        assert_eq!(text.len(), PRINTED_CHARS + 13);
        assert_eq!(text.split('-').count(), 14);
        assert!(text.split('-').all(|g| g.len() == 4));
        let back = RecoveryKey::parse(&text.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(back.key.expose(), k.key.expose());
        // One character changed: the checksum says so.
        let mut t: Vec<char> = text.chars().collect();
        t[5] = if t[5] == 'A' { 'B' } else { 'A' };
        let e = RecoveryKey::parse(&t.iter().collect::<String>()).unwrap_err();
        assert!(e.to_string().contains("mistyped"), "{e}");
        assert!(RecoveryKey::parse("ABCD").is_err());
        assert!(RecoveryKey::parse(&"0".repeat(56)).is_err());
        assert!(!format!("{k:?}").contains(&text[..4]));
    }

    #[test]
    fn slot_round_trip() {
        let ctx = SlotContext {
            volume_id: [1; 16],
            slot_id: 3,
        };
        let kek = SecretKey::generate().unwrap();
        let k = RecoveryKey::generate().unwrap();
        let s = k.seal(&kek, &ctx).unwrap();
        let slot = Slot {
            id: 3,
            kind: KIND.tag,
            label: "recovery".into(),
            created: 0,
            params: s.params,
            sealed: s.sealed,
        };
        assert_eq!(k.unseal(&slot, &ctx).unwrap().kek.expose(), kek.expose());
        let other = RecoveryKey::generate().unwrap();
        assert!(matches!(
            other.unseal(&slot, &ctx),
            Err(ProviderError::WrongSecret)
        ));
    }
}
