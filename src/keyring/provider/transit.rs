//! Keyslot kind 5, `transit`: the KEK encrypted by an OpenBao/Vault
//! Transit key ([`crate::kmsclient::transit`]); the server has authority
//! over the key's state, and keeps the keyring generation in a KV v2 entry
//! (the external rollback anchor).
//!
//! Public parameters, six strings each as (u16 length, UTF-8 bytes), in
//! this order: server address, namespace (empty: none), Transit mount,
//! Transit key name, KV v2 mount, KV path of the generation anchor.
//! Sealed KEK: the ASCII ciphertext `vault:vN:…`, made with `context` =
//! volume id ‖ slot id (u32 LE) ([`SlotContext::transit_context`]) on a
//! derived `aes256-gcm96` key.
//!
//! The token is never stored: it comes from a file, an environment
//! variable or an AppRole login at each unlock.
//!
//! Owns: the slot's server, key and anchor path; the [`KmsAuthority`] of a
//! volume unlocked through Transit (re-checks, the KV anchor).
//! Must never: store or show a token or a secret_id, or be called on the
//! I/O path (every call is bounded by the client's time budget).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::{
    KeyProvider, KmsAuthority, KmsSeen, ProviderError, ProviderKind, SealedSlot, SlotContext,
    Unsealed,
};
use crate::crypto::SecretKey;
use crate::format::keyring::Slot;
use crate::kmsclient::transit::{TokenSource, TransitClient, TransitConfig, TransitError};
use crate::kmsclient::SecretSource;

/// The `transit` kind.
pub const KIND: ProviderKind = ProviderKind {
    tag: 5,
    name: "transit",
    describe,
    unattended,
};

/// A Transit slot's public parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitParams {
    /// `http(s)://host:port`.
    pub address: String,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// Transit mount.
    pub mount: String,
    /// Transit key name.
    pub key: String,
    /// KV v2 mount of the anchor.
    pub kv_mount: String,
    /// KV path of the anchor.
    pub kv_path: String,
}

impl TransitParams {
    /// The parameter bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in [
            self.address.as_str(),
            self.namespace.as_deref().unwrap_or(""),
            &self.mount,
            &self.key,
            &self.kv_mount,
            &self.kv_path,
        ] {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Parses parameter bytes.
    pub fn decode(b: &[u8]) -> Result<Self, ProviderError> {
        let bad = || ProviderError::Malformed("Transit slot parameters do not parse".into());
        let mut fields = Vec::with_capacity(6);
        let mut off = 0;
        for _ in 0..6 {
            let n = b.get(off..off + 2).ok_or_else(bad)?;
            let n = u16::from_le_bytes([n[0], n[1]]) as usize;
            let s = b.get(off + 2..off + 2 + n).ok_or_else(bad)?;
            fields.push(std::str::from_utf8(s).map_err(|_| bad())?.to_string());
            off += 2 + n;
        }
        if off != b.len() {
            return Err(bad());
        }
        let mut f = fields.into_iter();
        let mut next = || f.next().expect("six fields");
        let address = next();
        let namespace = Some(next()).filter(|s| !s.is_empty());
        Ok(TransitParams {
            address,
            namespace,
            mount: next(),
            key: next(),
            kv_mount: next(),
            kv_path: next(),
        })
    }
}

fn describe(slot: &Slot) -> String {
    match TransitParams::decode(&slot.params) {
        Ok(p) => {
            let version = std::str::from_utf8(&slot.sealed)
                .ok()
                .and_then(crate::kmsclient::transit::ciphertext_version)
                .map_or_else(String::new, |v| format!(" v{v}"));
            format!(
                "transit {} {}/keys/{}{version} (anchor {}/{})",
                p.address, p.mount, p.key, p.kv_mount, p.kv_path
            )
        }
        Err(e) => e.to_string(),
    }
}

/// A token in `BAO_TOKEN` or `VAULT_TOKEN` opens a Transit slot unattended.
fn unattended(slot: &Slot) -> Option<Box<dyn KeyProvider>> {
    TransitParams::decode(&slot.params).ok()?;
    let var = ["BAO_TOKEN", "VAULT_TOKEN"]
        .into_iter()
        .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))?;
    let mut p = TransitProvider::new(TokenSource::Token(SecretSource::Env(var.into())));
    p.ca_file = ["BAO_CACERT", "VAULT_CACERT"]
        .into_iter()
        .find_map(std::env::var_os)
        .map(PathBuf::from);
    Some(Box::new(p))
}

/// A Transit key on an OpenBao/Vault server, as the caller names it. What
/// the caller leaves out comes from the slot.
#[derive(Debug, Clone)]
pub struct TransitProvider {
    token: TokenSource,
    address: Option<String>,
    key: Option<String>,
    mount: Option<String>,
    namespace: Option<String>,
    ca_file: Option<PathBuf>,
    kv_mount: Option<String>,
    kv_path: Option<String>,
    timeout: Option<std::time::Duration>,
}

impl TransitProvider {
    /// A provider that logs in with `token`.
    pub fn new(token: TokenSource) -> Self {
        TransitProvider {
            token,
            address: None,
            key: None,
            mount: None,
            namespace: None,
            ca_file: None,
            kv_mount: None,
            kv_path: None,
            timeout: None,
        }
    }

    /// The server (`http(s)://host:port`); a new slot needs one.
    pub fn address(mut self, a: impl Into<String>) -> Self {
        self.address = Some(a.into());
        self
    }

    /// The Transit key name; a new slot needs one.
    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.key = Some(k.into());
        self
    }

    /// The Transit mount (default `transit`).
    pub fn mount(mut self, m: impl Into<String>) -> Self {
        self.mount = Some(m.into());
        self
    }

    /// The namespace, if any.
    pub fn namespace(mut self, n: Option<String>) -> Self {
        self.namespace = n;
        self
    }

    /// A CA certificate file for https.
    pub fn ca_file(mut self, p: Option<PathBuf>) -> Self {
        self.ca_file = p;
        self
    }

    /// The KV v2 mount of the anchor (default `secret`).
    pub fn kv_mount(mut self, m: Option<String>) -> Self {
        self.kv_mount = m;
        self
    }

    /// The KV path of the anchor (default `sealfs/VOLUME-ID/anchor`).
    pub fn kv_path(mut self, p: Option<String>) -> Self {
        self.kv_path = p;
        self
    }

    /// The time budget of one call, retries included (default 5 s).
    pub fn timeout(mut self, t: Option<std::time::Duration>) -> Self {
        self.timeout = t;
        self
    }

    fn params_for_new(&self, ctx: &SlotContext) -> Result<TransitParams, ProviderError> {
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| ProviderError::Invalid(format!("a new Transit slot needs {what}")))
        };
        Ok(TransitParams {
            address: need(
                &self.address,
                "the server address (--transit-addr or BAO_ADDR)",
            )?,
            namespace: self.namespace.clone(),
            mount: self.mount.clone().unwrap_or_else(|| "transit".into()),
            key: need(&self.key, "the key name (--transit-key)")?,
            kv_mount: self.kv_mount.clone().unwrap_or_else(|| "secret".into()),
            kv_path: self.kv_path.clone().unwrap_or_else(|| {
                format!(
                    "sealfs/{}/anchor",
                    crate::format::config::hex(&ctx.volume_id)
                )
            }),
        })
    }

    /// The client for `p`, the caller's choices first.
    fn client(&self, p: &TransitParams) -> Result<TransitClient, ProviderError> {
        let mut cfg = TransitConfig::new(
            self.address.clone().unwrap_or_else(|| p.address.clone()),
            p.key.clone(),
            self.token.clone(),
        );
        cfg.mount = p.mount.clone();
        cfg.kv_mount = p.kv_mount.clone();
        cfg.namespace = self.namespace.clone().or_else(|| p.namespace.clone());
        cfg.ca_file = self.ca_file.clone();
        if let Some(t) = self.timeout {
            cfg.timeout = t;
            cfg.connect_timeout = cfg.connect_timeout.min(t);
        }
        Ok(TransitClient::connect(cfg)?)
    }
}

fn ciphertext(slot: &Slot) -> Result<&str, ProviderError> {
    std::str::from_utf8(&slot.sealed)
        .map_err(|_| ProviderError::Malformed("Transit ciphertext is not text".into()))
}

impl KeyProvider for TransitProvider {
    fn kind(&self) -> &'static ProviderKind {
        &KIND
    }

    fn describe(&self) -> String {
        format!(
            "transit {} key {}",
            self.address.as_deref().unwrap_or("(the slot's server)"),
            self.key.as_deref().unwrap_or("(the slot's key)")
        )
    }

    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError> {
        let p = self.params_for_new(ctx)?;
        let client = self.client(&p)?;
        client.check_key()?;
        let ct = client.encrypt(kek.expose(), &ctx.transit_context())?;
        Ok(SealedSlot {
            params: p.encode(),
            sealed: ct.into_bytes(),
        })
    }

    fn matches(&self, slot: &Slot) -> bool {
        if slot.kind != KIND.tag {
            return false;
        }
        let Ok(p) = TransitParams::decode(&slot.params) else {
            return false;
        };
        self.key.as_ref().is_none_or(|k| *k == p.key)
            && self.mount.as_ref().is_none_or(|m| *m == p.mount)
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        let p = TransitParams::decode(&slot.params)?;
        let client = self.client(&p)?;
        let ct = ciphertext(slot)?.to_string();
        let context = ctx.transit_context();
        let plain = client.decrypt(&ct, &context)?;
        let k: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
            ProviderError::Malformed("Transit returned a KEK of the wrong length".into())
        })?;
        let kek = SecretKey::from_bytes(k);
        let target = format!("{} {}/keys/{}", client.config().address, p.mount, p.key);
        let authority = Arc::new(TransitAuthority {
            seen: Mutex::new(KmsSeen {
                provider: KIND.name.into(),
                slot: slot.id,
                target,
                state: "ok".into(),
                message: None,
                checked_at: crate::sys::now_secs(),
            }),
            client,
            ciphertext: ct,
            context,
            kv_path: p.kv_path,
        });
        Ok(Unsealed {
            kek,
            authority: Some(authority),
        })
    }

    fn rewrap(&self, slot: &Slot, ctx: &SlotContext) -> Option<Result<Vec<u8>, ProviderError>> {
        Some((|| {
            let p = TransitParams::decode(&slot.params)?;
            let client = self.client(&p)?;
            let ct = client.rewrap(ciphertext(slot)?, &ctx.transit_context())?;
            Ok(ct.into_bytes())
        })())
    }
}

/// The Transit server behind the slot a volume was unlocked with.
pub struct TransitAuthority {
    client: TransitClient,
    ciphertext: String,
    context: [u8; 20],
    kv_path: String,
    seen: Mutex<KmsSeen>,
}

impl std::fmt::Debug for TransitAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitAuthority")
            .field("client", &self.client)
            .field("kv_path", &self.kv_path)
            .finish_non_exhaustive()
    }
}

/// The `KmsSeen::state` word for an error.
pub fn state_of(e: &TransitError) -> &'static str {
    match e {
        TransitError::KeyDisabled { .. } | TransitError::DecryptionNotAllowed { .. } => {
            "key_disabled"
        }
        TransitError::KeyNotFound { .. } => "key_not_found",
        TransitError::PermissionDenied { .. } | TransitError::Credentials(_) => "permission_denied",
        TransitError::Unreachable { .. }
        | TransitError::Timeout { .. }
        | TransitError::Server { .. }
        | TransitError::Tls { .. } => "unreachable",
        _ => "error",
    }
}

impl TransitAuthority {
    fn note(&self, r: &Result<(), TransitError>) {
        let mut s = self.seen.lock();
        s.checked_at = crate::sys::now_secs();
        match r {
            Ok(()) => {
                s.state = "ok".into();
                s.message = None;
            }
            Err(e) => {
                s.state = state_of(e).into();
                s.message = Some(e.to_string());
            }
        }
    }
}

impl KmsAuthority for TransitAuthority {
    fn check(&self) -> Result<(), ProviderError> {
        let r = self
            .client
            .decrypt(&self.ciphertext, &self.context)
            .map(drop);
        self.note(&r);
        Ok(r?)
    }

    fn last_seen(&self) -> KmsSeen {
        self.seen.lock().clone()
    }

    fn anchored_generation(&self) -> Result<Option<u32>, ProviderError> {
        let entry = self.client.kv_get(&self.kv_path)?;
        Ok(entry
            .and_then(|e| e.data)
            .and_then(|d| d.get("generation").and_then(Value::as_u64))
            .map(|g| g.min(u32::MAX as u64) as u32))
    }

    fn anchor_generation(&self, generation: u32) -> Result<(), ProviderError> {
        for _ in 0..3 {
            let entry = self.client.kv_get(&self.kv_path)?;
            let (cas, have) = match &entry {
                None => (0, None),
                Some(e) => (
                    e.version,
                    e.data
                        .as_ref()
                        .and_then(|d| d.get("generation").and_then(Value::as_u64)),
                ),
            };
            if have.is_some_and(|h| h >= generation as u64) {
                return Ok(());
            }
            let mut data = Map::new();
            data.insert("generation".into(), Value::from(generation));
            match self.client.kv_put_cas(&self.kv_path, &data, cas) {
                Ok(_) => return Ok(()),
                Err(TransitError::CasConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ProviderError::Invalid(format!(
            "the KV anchor {} keeps changing under sealfs (another writer?)",
            self.kv_path
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip() {
        let p = TransitParams {
            address: "http://127.0.0.1:8200".into(),
            namespace: None,
            mount: "transit".into(),
            key: "vault".into(),
            kv_mount: "secret".into(),
            kv_path: "sealfs/abc/anchor".into(),
        };
        assert_eq!(TransitParams::decode(&p.encode()).unwrap(), p);
        let with_ns = TransitParams {
            namespace: Some("team".into()),
            ..p.clone()
        };
        assert_eq!(TransitParams::decode(&with_ns.encode()).unwrap(), with_ns);
        let mut b = p.encode();
        b.push(0);
        assert!(TransitParams::decode(&b).is_err());
        assert!(TransitParams::decode(&b[..5]).is_err());
        let slot = Slot {
            id: 1,
            kind: KIND.tag,
            label: String::new(),
            created: 0,
            params: p.encode(),
            sealed: b"vault:v3:abcd".to_vec(),
        };
        assert_eq!(
            describe(&slot),
            "transit http://127.0.0.1:8200 transit/keys/vault v3 (anchor secret/sealfs/abc/anchor)"
        );
    }
}
