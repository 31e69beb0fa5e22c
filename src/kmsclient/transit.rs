//! An OpenBao/Vault Transit key as a root of trust: the server seals and
//! opens the volume KEK, and a KV v2 entry keeps a monotonic generation
//! anchor server-side.
//!
//! Owns: the blocking HTTP client (ureq, rustls; optional CA file), logging
//! in (token from a file or an environment variable, or AppRole), bounded
//! retries, and mapping OpenBao's answers to [`TransitError`]s that say
//! what to do next.
//! Must never: see a volume, write files, put a token, a secret_id or
//! plaintext into a log line, an error or `Debug` output, or retry a
//! request the server answered with 4xx.
//!
//! # Binding: `context` on a derived key, not `associated_data`
//!
//! OpenBao 2.x accepts `associated_data` for `aes256-gcm96` keys on
//! encrypt and decrypt, but its `rewrap` endpoint has no such field and
//! decrypts with no associated data: a ciphertext sealed with
//! `associated_data` can never be rewrapped to a newer key version
//! ("cipher: message authentication failed"). A key created with
//! `derived=true` takes a `context` on encrypt, decrypt *and* rewrap (the
//! per-context key is HKDF-derived), and a different context fails to
//! decrypt. So sealfs uses a derived `aes256-gcm96` key and passes its AAD
//! as `context`. Beware: a non-derived key silently *ignores* `context`;
//! [`TransitClient::check_key`] refuses such a key.
//!
//! # Timeouts and retries
//!
//! [`TransitConfig::timeout`] bounds a whole call, retries included;
//! [`TransitConfig::connect_timeout`] bounds each connection attempt.
//! Connection failures, timeouts and 5xx answers are retried up to
//! [`TransitConfig::retries`] times with exponential backoff, as long as
//! the budget lasts; requests that change state (rotate, KV writes) are
//! retried only when the connection was never made.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::{SecretSource, SecretSourceError};

/// How the client authenticates.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A token read from a file, an environment variable, or given.
    Token(SecretSource),
    /// AppRole login at `auth/<mount>/login`.
    AppRole {
        /// The auth mount (usually `approle`).
        mount: String,
        /// The role_id.
        role_id: SecretSource,
        /// The secret_id.
        secret_id: SecretSource,
    },
}

/// Where the server is and how to use it.
#[derive(Clone, Debug)]
pub struct TransitConfig {
    /// `http://host:port` or `https://host:port` (`BAO_ADDR`/`VAULT_ADDR`).
    pub address: String,
    /// Authentication.
    pub token: TokenSource,
    /// PEM CA certificate(s) to trust for https (instead of the web PKI).
    pub ca_file: Option<PathBuf>,
    /// `X-Vault-Namespace`, if any.
    pub namespace: Option<String>,
    /// Transit mount path (default `transit`).
    pub mount: String,
    /// The Transit key name.
    pub key: String,
    /// KV v2 mount for the generation anchor (default `secret`).
    pub kv_mount: String,
    /// Bound of one connection attempt (default 5 s).
    pub connect_timeout: Duration,
    /// Bound of one whole call, retries included (default 5 s).
    pub timeout: Duration,
    /// Retries after the first attempt (default 3).
    pub retries: u32,
    /// First backoff, doubled per retry (default 100 ms).
    pub backoff: Duration,
}

impl TransitConfig {
    /// A configuration with the defaults above.
    pub fn new(address: impl Into<String>, key: impl Into<String>, token: TokenSource) -> Self {
        TransitConfig {
            address: address.into(),
            token,
            ca_file: None,
            namespace: None,
            mount: "transit".into(),
            key: key.into(),
            kv_mount: "secret".into(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }

    /// From the environment, as the `bao` CLI reads it: `BAO_ADDR` (or
    /// `VAULT_ADDR`), the token from `BAO_TOKEN` (or `VAULT_TOKEN`),
    /// `BAO_CACERT`/`VAULT_CACERT`, `BAO_NAMESPACE`/`VAULT_NAMESPACE`.
    pub fn from_env(key: impl Into<String>) -> Result<Self, TransitError> {
        let pick = |a: &str, b: &str| -> Option<(String, String)> {
            [a, b]
                .into_iter()
                .find_map(|n| std::env::var(n).ok().map(|v| (n.to_owned(), v)))
        };
        let (_, address) = pick("BAO_ADDR", "VAULT_ADDR")
            .ok_or_else(|| TransitError::Config("neither BAO_ADDR nor VAULT_ADDR is set".into()))?;
        let token_var = pick("BAO_TOKEN", "VAULT_TOKEN").map_or("BAO_TOKEN".into(), |(n, _)| n);
        let mut cfg = TransitConfig::new(
            address,
            key,
            TokenSource::Token(SecretSource::Env(token_var)),
        );
        cfg.ca_file = pick("BAO_CACERT", "VAULT_CACERT").map(|(_, v)| v.into());
        cfg.namespace = pick("BAO_NAMESPACE", "VAULT_NAMESPACE").map(|(_, v)| v);
        Ok(cfg)
    }
}

/// What went wrong. Never contains a token, a secret_id or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    /// The configuration is unusable (address, CA file, names).
    #[error("OpenBao client configuration: {0}")]
    Config(String),
    /// The token (or AppRole ids) could not be read.
    #[error("OpenBao credentials: {0}")]
    Credentials(#[from] SecretSourceError),
    /// No connection after every retry.
    #[error("OpenBao at {addr} is unreachable after {attempts} attempts ({reason}); check that the server runs and the address (BAO_ADDR) is right, then retry")]
    Unreachable {
        /// The server address.
        addr: String,
        /// Attempts made.
        attempts: u32,
        /// The last transport error.
        reason: String,
    },
    /// The call did not finish within its time budget.
    #[error("OpenBao at {addr} did not answer within {after:?}; check the server's load and the network, then retry")]
    Timeout {
        /// The server address.
        addr: String,
        /// The budget.
        after: Duration,
    },
    /// TLS failed (untrusted certificate, wrong name).
    #[error("TLS with OpenBao at {addr} failed ({reason}); point ca_file (BAO_CACERT) at the CA that signed the server certificate")]
    Tls {
        /// The server address.
        addr: String,
        /// The TLS error.
        reason: String,
    },
    /// 403: the token is invalid, expired, revoked, or its policy lacks the path.
    #[error("OpenBao denied {what}: the token is invalid, expired or revoked, or its policy does not allow this path; log in again or ask for the policy")]
    PermissionDenied {
        /// The operation.
        what: String,
    },
    /// The Transit key does not exist (or was deleted).
    #[error("Transit key {key:?} not found at mount {mount:?}; check the key name and mount, or restore the key from an OpenBao backup")]
    KeyNotFound {
        /// The key.
        key: String,
        /// The mount.
        mount: String,
    },
    /// The key is soft-deleted (or otherwise refused for use).
    #[error("Transit key {key:?} is disabled ({reason}); restore it (transit/keys/{key}/soft-delete-restore) or use another keyslot")]
    KeyDisabled {
        /// The key.
        key: String,
        /// The server's reason.
        reason: String,
    },
    /// The ciphertext's key version is below `min_decryption_version`.
    #[error("Transit key {key:?} no longer decrypts this ciphertext: its version is below the key's min_decryption_version; lower min_decryption_version or use another keyslot (rewrap slots before raising it)")]
    DecryptionNotAllowed {
        /// The key.
        key: String,
    },
    /// The ciphertext is malformed, tampered, or for another context/key.
    #[error("the Transit ciphertext is invalid ({reason}): it was changed, belongs to another key or volume, or the key was recreated; restore the keyslot from backup or use another keyslot")]
    InvalidCiphertext {
        /// The server's reason.
        reason: String,
    },
    /// The key exists but cannot bind a context (see the module docs).
    #[error("Transit key {key:?} is unsuitable: {reason}; create it with type=aes256-gcm96 derived=true")]
    KeyUnsuitable {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A KV check-and-set write lost against another writer.
    #[error("the KV entry {path:?} changed since it was read (check-and-set conflict); read it again and decide whether to retry")]
    CasConflict {
        /// The KV path.
        path: String,
    },
    /// Another 4xx answer.
    #[error(
        "OpenBao refused the request ({status}: {message}); check the mount paths and key name"
    )]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// 5xx after every retry (sealed, standby, internal error).
    #[error("OpenBao at {addr} failed ({status}: {message}); check the server (sealed? no active node?) and retry")]
    Server {
        /// The server address.
        addr: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// An answer that does not have the expected shape.
    #[error("unexpected answer from OpenBao: {0}")]
    Protocol(String),
}

/// What `GET <mount>/keys/<name>` tells about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key name.
    pub name: String,
    /// Key type, e.g. `aes256-gcm96`.
    pub key_type: String,
    /// Newest version.
    pub latest_version: u32,
    /// Oldest version that still decrypts.
    pub min_decryption_version: u32,
    /// Oldest version allowed to encrypt (0 = latest).
    pub min_encryption_version: u32,
    /// Whether the key may be deleted.
    pub deletion_allowed: bool,
    /// Whether the key is derived (required for context binding).
    pub derived: bool,
    /// Whether convergent encryption is on.
    pub convergent: bool,
    /// OpenBao soft deletion.
    pub soft_deleted: bool,
}

/// A KV v2 entry: its current version and data (`None` once deleted).
#[derive(Clone, Debug, PartialEq)]
pub struct KvEntry {
    /// The current version (the `cas` to pass to the next write).
    pub version: u64,
    /// The data, or `None` if the current version is deleted or destroyed.
    pub data: Option<Map<String, Value>>,
}

/// The key version of a `vault:vN:…` ciphertext.
pub fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (n, body) = rest.split_once(':')?;
    if body.is_empty() {
        return None;
    }
    n.parse().ok()
}

/// What a request is about, for mapping errors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Key,
    Kv,
    /// A KV read: a 404 without errors is an answer (missing or deleted).
    KvRead,
    Login,
}

/// How a failed attempt may be retried.
enum Attempt {
    Done(u16, Value),
    /// Connection never made: safe to retry any request.
    NoConnection(String),
    /// Timeout or connection lost after sending: retry idempotent requests.
    Lost {
        timeout: bool,
        reason: String,
    },
    Server(u16, String),
    /// The TLS handshake failed: retrying will not help.
    Tls(String),
}

/// A blocking client for one Transit key (and a KV v2 mount).
pub struct TransitClient {
    cfg: TransitConfig,
    base: String,
    agent: ureq::Agent,
    token: Zeroizing<String>,
}

impl fmt::Debug for TransitClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitClient")
            .field("address", &self.cfg.address)
            .field("mount", &self.cfg.mount)
            .field("key", &self.cfg.key)
            .finish_non_exhaustive()
    }
}

fn valid_name(what: &str, v: &str) -> Result<(), TransitError> {
    let ok = !v.is_empty()
        && v.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(TransitError::Config(format!(
            "{what} {v:?} must be non-empty and use only letters, digits, '-', '_', '.' and '/'"
        )))
    }
}

impl TransitClient {
    /// Builds the client and resolves the token (an AppRole login happens
    /// here, within the same time budget as any call).
    pub fn connect(cfg: TransitConfig) -> Result<TransitClient, TransitError> {
        let addr = cfg.address.trim_end_matches('/').to_owned();
        let https = addr.starts_with("https://");
        if !https && !addr.starts_with("http://") {
            return Err(TransitError::Config(format!(
                "address {addr:?} must start with http:// or https://"
            )));
        }
        valid_name("mount", &cfg.mount)?;
        valid_name("key name", &cfg.key)?;
        valid_name("KV mount", &cfg.kv_mount)?;
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent("sealfs-kmsclient")
            .max_redirects(0);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                TransitError::Config(format!("cannot read the CA file {}: {e}", ca.display()))
            })?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(TransitError::Config(format!(
                    "the CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let agent: ureq::Agent = builder.build().into();
        let mut client = TransitClient {
            base: format!("{addr}/v1"),
            cfg,
            agent,
            token: Zeroizing::new(String::new()),
        };
        client.token = match &client.cfg.token {
            TokenSource::Token(src) => src.resolve()?,
            TokenSource::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                valid_name("AppRole mount", mount)?;
                #[derive(serde::Serialize)]
                struct Login<'a> {
                    role_id: &'a str,
                    secret_id: &'a str,
                }
                let (role_id, secret_id) = (role_id.resolve()?, secret_id.resolve()?);
                let login = Login {
                    role_id: &role_id,
                    secret_id: &secret_id,
                };
                let body = Zeroizing::new(
                    serde_json::to_vec(&login)
                        .map_err(|e| TransitError::Protocol(e.to_string()))?,
                );
                let path = format!("auth/{mount}/login");
                let v = client.call("POST", &path, Some(&body), true, Op::Login)?;
                let tok = v["auth"]["client_token"].as_str().ok_or_else(|| {
                    TransitError::Protocol("AppRole login answer has no auth.client_token".into())
                })?;
                Zeroizing::new(tok.to_owned())
            }
        };
        if client.token.bytes().any(|c| !(0x21..0x7f).contains(&c)) {
            return Err(TransitError::Config(
                "the token holds characters that cannot go in an HTTP header".into(),
            ));
        }
        Ok(client)
    }

    /// The configuration in use.
    pub fn config(&self) -> &TransitConfig {
        &self.cfg
    }

    /// One HTTP exchange, without retries.
    fn attempt(&self, method: &str, url: &str, body: Option<&[u8]>, budget: Duration) -> Attempt {
        let connect = self.cfg.connect_timeout.min(budget);
        macro_rules! prepare {
            ($rb:expr) => {{
                let mut rb = $rb
                    .config()
                    .timeout_global(Some(budget))
                    .timeout_connect(Some(connect))
                    .build()
                    .header("X-Vault-Request", "true");
                if !self.token.is_empty() {
                    rb = rb.header("X-Vault-Token", self.token.as_str());
                }
                if let Some(ns) = &self.cfg.namespace {
                    rb = rb.header("X-Vault-Namespace", ns.as_str());
                }
                rb
            }};
        }
        let result = match (method, body) {
            ("GET", _) => prepare!(self.agent.get(url)).call(),
            ("DELETE", _) => prepare!(self.agent.delete(url)).call(),
            (_, Some(b)) => prepare!(self.agent.post(url))
                .header("Content-Type", "application/json")
                .send(b),
            (_, None) => prepare!(self.agent.post(url)).send_empty(),
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => return classify(e),
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => Zeroizing::new(t),
            Err(e) => return classify(e),
        };
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => v,
                Err(_) if status >= 500 => Value::Null,
                Err(_) => return Attempt::Done(status, Value::Null),
            }
        };
        if status >= 500 {
            return Attempt::Server(status, server_message(&value));
        }
        Attempt::Done(status, value)
    }

    /// A call with retries, the time budget and error mapping. Returns the
    /// JSON answer of a 2xx (Null for 204).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        idempotent: bool,
        op: Op,
    ) -> Result<Value, TransitError> {
        let url = format!("{}/{path}", self.base);
        let start = Instant::now();
        let deadline = start + self.cfg.timeout;
        let addr = self.cfg.address.clone();
        let mut attempts = 0;
        loop {
            let budget = deadline.saturating_duration_since(Instant::now());
            if budget.is_zero() {
                return Err(TransitError::Timeout {
                    addr,
                    after: self.cfg.timeout,
                });
            }
            attempts += 1;
            let outcome = self.attempt(method, &url, body, budget);
            let (retryable, err) = match outcome {
                Attempt::Done(status, v) if (200..300).contains(&status) => return Ok(v),
                Attempt::Done(404, v)
                    if op == Op::KvRead && v["errors"].as_array().is_none_or(|a| a.is_empty()) =>
                {
                    return Ok(v)
                }
                Attempt::Done(status, v) => return Err(self.map_status(status, &v, path, op)),
                Attempt::Tls(reason) => return Err(TransitError::Tls { addr, reason }),
                Attempt::NoConnection(reason) => (
                    true,
                    TransitError::Unreachable {
                        addr: addr.clone(),
                        attempts,
                        reason,
                    },
                ),
                Attempt::Lost { timeout: true, .. } => (
                    idempotent,
                    TransitError::Timeout {
                        addr: addr.clone(),
                        after: self.cfg.timeout,
                    },
                ),
                Attempt::Lost { reason, .. } => (
                    idempotent,
                    TransitError::Unreachable {
                        addr: addr.clone(),
                        attempts,
                        reason,
                    },
                ),
                Attempt::Server(status, message) => (
                    idempotent,
                    TransitError::Server {
                        addr: addr.clone(),
                        status,
                        message,
                    },
                ),
            };
            if !retryable || attempts > self.cfg.retries {
                return Err(err);
            }
            let backoff = self.cfg.backoff * 2u32.saturating_pow(attempts - 1);
            let left = deadline.saturating_duration_since(Instant::now());
            if backoff >= left {
                return Err(err);
            }
            std::thread::sleep(backoff);
        }
    }

    fn map_status(&self, status: u16, v: &Value, path: &str, op: Op) -> TransitError {
        let msg = server_message(v);
        let key = self.cfg.key.clone();
        let has = |s: &str| msg.contains(s);
        match status {
            403 => TransitError::PermissionDenied {
                what: format!("access to {path}"),
            },
            400 if op == Op::Login => TransitError::PermissionDenied {
                what: format!("the AppRole login ({msg})"),
            },
            404 | 400 if op == Op::Key && (status == 404 || has("key not found")) => {
                TransitError::KeyNotFound {
                    key,
                    mount: self.cfg.mount.clone(),
                }
            }
            400 if has("disallowed by policy (too old)") => {
                TransitError::DecryptionNotAllowed { key }
            }
            400 if has("soft-deleted") => TransitError::KeyDisabled { key, reason: msg },
            400 if has("invalid ciphertext") || has("message authentication failed") => {
                TransitError::InvalidCiphertext { reason: msg }
            }
            400 if op == Op::Kv && has("check-and-set") => TransitError::CasConflict {
                path: path.to_owned(),
            },
            _ => TransitError::Rejected {
                status,
                message: msg,
            },
        }
    }

    fn key_path(&self, action: &str) -> String {
        format!("{}/{action}/{}", self.cfg.mount, self.cfg.key)
    }

    fn post_key(&self, path: &str, body: &Value) -> Result<Value, TransitError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(body).map_err(|e| TransitError::Protocol(e.to_string()))?,
        );
        self.call("POST", path, Some(&bytes), true, Op::Key)
    }

    fn ciphertext_of(v: &Value) -> Result<String, TransitError> {
        v["data"]["ciphertext"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| TransitError::Protocol("no data.ciphertext in the answer".into()))
    }

    /// Encrypts `plaintext` under the key's latest version, bound to
    /// `context` (non-empty; the key must be derived, see
    /// [`check_key`](Self::check_key)). Returns `vault:vN:…`.
    pub fn encrypt(&self, plaintext: &[u8], context: &[u8]) -> Result<String, TransitError> {
        #[derive(serde::Serialize)]
        struct Request<'a> {
            plaintext: &'a str,
            context: &'a str,
        }
        let pt = Zeroizing::new(B64.encode(plaintext));
        let request = Request {
            plaintext: &pt,
            context: &B64.encode(context),
        };
        let body = Zeroizing::new(
            serde_json::to_vec(&request).map_err(|e| TransitError::Protocol(e.to_string()))?,
        );
        let v = self.call(
            "POST",
            &self.key_path("encrypt"),
            Some(&body),
            true,
            Op::Key,
        )?;
        Self::ciphertext_of(&v)
    }

    /// Decrypts a `vault:vN:…` ciphertext made with the same `context`.
    pub fn decrypt(
        &self,
        ciphertext: &str,
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TransitError> {
        let body = json!({"ciphertext": ciphertext, "context": B64.encode(context)});
        let mut v = self.post_key(&self.key_path("decrypt"), &body)?;
        let pt = match v["data"].get_mut("plaintext") {
            Some(Value::String(s)) => Zeroizing::new(std::mem::take(s)),
            _ => {
                return Err(TransitError::Protocol(
                    "no data.plaintext in the answer".into(),
                ))
            }
        };
        B64.decode(pt.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| TransitError::Protocol("data.plaintext is not base64".into()))
    }

    /// Re-encrypts a ciphertext under the key's latest version on the
    /// server (the plaintext never leaves it); same `context`.
    pub fn rewrap(&self, ciphertext: &str, context: &[u8]) -> Result<String, TransitError> {
        let body = json!({"ciphertext": ciphertext, "context": B64.encode(context)});
        Self::ciphertext_of(&self.post_key(&self.key_path("rewrap"), &body)?)
    }

    /// Reads the key's metadata.
    pub fn key_info(&self) -> Result<KeyInfo, TransitError> {
        let v = self.call("GET", &self.key_path("keys"), None, true, Op::Key)?;
        parse_key_info(&v)
    }

    /// [`key_info`](Self::key_info), refusing a key that cannot bind a
    /// context: not `aes256-gcm96`, not derived, convergent, or soft-deleted.
    pub fn check_key(&self) -> Result<KeyInfo, TransitError> {
        let info = self.key_info()?;
        let reason = if info.key_type != "aes256-gcm96" {
            format!("its type is {}", info.key_type)
        } else if !info.derived {
            "it is not derived, so it would ignore the context".into()
        } else if info.convergent {
            "it uses convergent encryption".into()
        } else if info.soft_deleted {
            return Err(TransitError::KeyDisabled {
                key: info.name,
                reason: "soft-deleted".into(),
            });
        } else {
            return Ok(info);
        };
        Err(TransitError::KeyUnsuitable {
            key: info.name,
            reason,
        })
    }

    /// Creates the key as sealfs needs it (`aes256-gcm96`, `derived`).
    pub fn create_key(&self) -> Result<KeyInfo, TransitError> {
        let body = json!({"type": "aes256-gcm96", "derived": true});
        let bytes = serde_json::to_vec(&body).map_err(|e| TransitError::Protocol(e.to_string()))?;
        self.call("POST", &self.key_path("keys"), Some(&bytes), false, Op::Key)?;
        self.check_key()
    }

    /// Rotates the key (admin/tests); returns the new latest version.
    pub fn rotate_key(&self) -> Result<u32, TransitError> {
        let path = format!("{}/rotate", self.key_path("keys"));
        let v = self.call("POST", &path, None, false, Op::Key)?;
        match v.get("data") {
            Some(d) if d.is_object() => Ok(parse_key_info(&v)?.latest_version),
            _ => Ok(self.key_info()?.latest_version),
        }
    }

    /// Sets the key's `min_decryption_version` (admin/tests): ciphertexts
    /// of older versions stop decrypting.
    pub fn set_min_decryption_version(&self, version: u32) -> Result<(), TransitError> {
        let path = format!("{}/config", self.key_path("keys"));
        self.post_key(&path, &json!({"min_decryption_version": version}))?;
        Ok(())
    }

    fn kv_path(&self, path: &str) -> Result<String, TransitError> {
        valid_name("KV path", path)?;
        Ok(format!("{}/data/{path}", self.cfg.kv_mount))
    }

    /// Reads a KV v2 entry: `None` if it never existed.
    pub fn kv_get(&self, path: &str) -> Result<Option<KvEntry>, TransitError> {
        let v = self.call("GET", &self.kv_path(path)?, None, true, Op::KvRead)?;
        let version = match v["data"]["metadata"]["version"].as_u64() {
            Some(n) => n,
            None => return Ok(None),
        };
        let data = v["data"]["data"].as_object().cloned();
        Ok(Some(KvEntry { version, data }))
    }

    /// Writes a KV v2 entry only if its current version is `cas` (0: only
    /// if it does not exist yet). Returns the new version; a lost race is
    /// [`TransitError::CasConflict`].
    pub fn kv_put_cas(
        &self,
        path: &str,
        data: &Map<String, Value>,
        cas: u64,
    ) -> Result<u64, TransitError> {
        let url_path = self.kv_path(path)?;
        let body = serde_json::to_vec(&json!({"options": {"cas": cas}, "data": data}))
            .map_err(|e| TransitError::Protocol(e.to_string()))?;
        let v = self.call("POST", &url_path, Some(&body), false, Op::Kv)?;
        v["data"]["version"]
            .as_u64()
            .ok_or_else(|| TransitError::Protocol("no data.version in the KV answer".into()))
    }
}

fn parse_key_info(v: &Value) -> Result<KeyInfo, TransitError> {
    let d = &v["data"];
    let num = |k: &str| -> Result<u32, TransitError> {
        d[k].as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| TransitError::Protocol(format!("key info has no numeric {k}")))
    };
    Ok(KeyInfo {
        name: d["name"].as_str().unwrap_or_default().to_owned(),
        key_type: d["type"]
            .as_str()
            .ok_or_else(|| TransitError::Protocol("key info has no type".into()))?
            .to_owned(),
        latest_version: num("latest_version")?,
        min_decryption_version: num("min_decryption_version")?,
        min_encryption_version: num("min_encryption_version").unwrap_or(0),
        deletion_allowed: d["deletion_allowed"].as_bool().unwrap_or(false),
        derived: d["derived"].as_bool().unwrap_or(false),
        convergent: d["convergent_encryption"].as_bool().unwrap_or(false),
        soft_deleted: d["soft_deleted"].as_bool().unwrap_or(false),
    })
}

/// The server's `errors` joined, shortened; never request data.
fn server_message(v: &Value) -> String {
    let mut m = match v["errors"].as_array() {
        Some(errs) if !errs.is_empty() => errs
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        _ => "no error message".into(),
    };
    if m.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| m.is_char_boundary(i))
            .unwrap_or(0);
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// Sorts a transport error: was the connection made, did it time out?
fn classify(e: ureq::Error) -> Attempt {
    use std::io::ErrorKind as K;
    use ureq::Timeout as T;
    match e {
        ureq::Error::Timeout(T::Resolve | T::Connect) => {
            Attempt::NoConnection("connect timed out".into())
        }
        ureq::Error::Timeout(_) => Attempt::Lost {
            timeout: true,
            reason: "timed out".into(),
        },
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Attempt::NoConnection(e.to_string())
        }
        ureq::Error::Tls(m) => Attempt::Tls(m.to_owned()),
        ureq::Error::Rustls(r) => Attempt::Tls(r.to_string()),
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused
            | K::AddrNotAvailable
            | K::NetworkUnreachable
            | K::HostUnreachable => Attempt::NoConnection(io.to_string()),
            K::TimedOut | K::WouldBlock => Attempt::Lost {
                timeout: true,
                reason: io.to_string(),
            },
            K::InvalidData if io.to_string().contains("certificate") => {
                Attempt::Tls(io.to_string())
            }
            _ => Attempt::Lost {
                timeout: false,
                reason: io.to_string(),
            },
        },
        other => Attempt::Lost {
            timeout: false,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version("vault:v1:abcd"), Some(1));
        assert_eq!(ciphertext_version("vault:v12:abcd"), Some(12));
        assert_eq!(ciphertext_version("vault:v1:"), None);
        assert_eq!(ciphertext_version("vault:x1:abcd"), None);
        assert_eq!(ciphertext_version("v1:abcd"), None);
    }

    #[test]
    fn server_messages_are_joined_and_bounded() {
        let v = json!({"errors": ["a", "b"]});
        assert_eq!(server_message(&v), "a; b");
        let long = "é".repeat(400);
        let m = server_message(&json!({ "errors": [long] }));
        assert!(m.len() <= 304 && m.ends_with('…'));
        assert_eq!(server_message(&Value::Null), "no error message");
    }

    #[test]
    fn config_is_checked_and_debug_hides_secrets() {
        let tok = TokenSource::Token(SecretSource::Value(Zeroizing::new("s.SECRET".into())));
        let cfg = TransitConfig::new("ftp://x", "k", tok.clone());
        assert!(matches!(
            TransitClient::connect(cfg),
            Err(TransitError::Config(_))
        ));
        let cfg = TransitConfig::new("http://127.0.0.1:1", "../k", tok.clone());
        assert!(matches!(
            TransitClient::connect(cfg),
            Err(TransitError::Config(_))
        ));
        let cfg = TransitConfig::new("http://127.0.0.1:1", "k", tok);
        assert!(!format!("{cfg:?}").contains("SECRET"));
        let c = TransitClient::connect(cfg).unwrap();
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn key_info_parses_openbao_answer() {
        let v = json!({"data": {"name": "k", "type": "aes256-gcm96", "latest_version": 3,
            "min_decryption_version": 2, "min_encryption_version": 0, "deletion_allowed": false,
            "derived": true, "convergent_encryption": false, "soft_deleted": false}});
        let i = parse_key_info(&v).unwrap();
        assert_eq!(
            (i.latest_version, i.min_decryption_version, i.derived),
            (3, 2, true)
        );
        assert!(parse_key_info(&json!({"data": {}})).is_err());
    }
}
