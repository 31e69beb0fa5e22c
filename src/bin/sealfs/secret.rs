//! Gathering what unlocks a volume: the options (`--passfile`,
//! `--extpass`, `--key-file`, `--recovery-key`, `--pkcs11`, `--transit-*`),
//! else the slots that open unattended and then a passphrase asked on the
//! terminal; and opening a volume with it.
//!
//! Owns: where a secret comes from, the prompts (passphrase, PIN), and the
//! order providers are tried in.
//! Must never: keep a secret longer than the call that needs it, print one,
//! or put one into argv or an error.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use sealfs::format::keyring::{Slot, V1Header};
use sealfs::keyring::provider::passphrase::{Passphrase, KIND as PASSPHRASE};
use sealfs::keyring::provider::pkcs11::Pkcs11Provider;
use sealfs::keyring::provider::recovery::RecoveryKey;
use sealfs::keyring::provider::transit::TransitProvider;
use sealfs::keyring::provider::{
    KeyProvider, ProviderError, ProviderKind, SealedSlot, SlotContext, Unsealed,
};
use sealfs::keyring::{SecretError, Unlock, UnlockSecret, KEYRING_FILE};
use sealfs::kms::{anchor, OfflineAudit};
use sealfs::kmsclient::transit::TokenSource;
use sealfs::kmsclient::SecretSource;
use sealfs::volume::Volume;

use crate::args::{Pkcs11Args, SecretArgs, TransitArgs};
use crate::error::{exit, CliError};

fn secret_err(e: SecretError) -> CliError {
    CliError::new(exit::ERROR, e.to_string())
}

fn is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// The first line `cmd` prints (run with `sh -c`), as a passphrase.
fn extpass(cmd: &str) -> Result<UnlockSecret, CliError> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| CliError::new(exit::ERROR, format!("cannot run --extpass command: {e}")))?;
    if !out.status.success() {
        return Err(CliError::new(
            exit::ERROR,
            format!("--extpass command failed ({})", out.status),
        ));
    }
    let stdout = Zeroizing::new(out.stdout);
    UnlockSecret::from_passphrase_line(&stdout).map_err(secret_err)
}

/// Asks for a passphrase on the terminal (twice when `confirm`).
fn prompt_passphrase(confirm: bool) -> Result<UnlockSecret, CliError> {
    let p1 = Zeroizing::new(
        rpassword::prompt_password("Passphrase: ")
            .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?,
    );
    if confirm {
        let p2 = Zeroizing::new(
            rpassword::prompt_password("Repeat passphrase: ")
                .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?,
        );
        if *p1 != *p2 {
            return Err(CliError::new(exit::ERROR, "passphrases do not match"));
        }
    }
    UnlockSecret::from_passphrase_line(p1.as_bytes()).map_err(secret_err)
}

/// A passphrase piped on stdin (`echo pw | sealfs mount …`, as gocryptfs
/// reads it): its first line. Nothing on stdin (/dev/null, EOF) is an
/// error that names the options.
fn stdin_passphrase() -> Result<UnlockSecret, CliError> {
    use std::io::Read;
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .lock()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CliError::new(
                exit::ERROR,
                format!("reading the passphrase from stdin: {e}"),
            )
        })?;
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if line.is_empty() {
        return Err(CliError::new(
            exit::ERROR,
            "no passphrase: stdin is not a terminal and gave none; pipe it in \
             (echo PASS | sealfs …) or use --passfile, --extpass or --key-file",
        ));
    }
    UnlockSecret::from_passphrase_line(line).map_err(secret_err)
}

/// The passphrase typed on the terminal, or piped on stdin.
fn ask_passphrase(confirm: bool) -> Result<UnlockSecret, CliError> {
    if is_terminal() {
        prompt_passphrase(confirm)
    } else {
        stdin_passphrase()
    }
}

/// A passphrase or a key file from the options, else asked on the terminal
/// (for a new secret: `init`, `import` into a new volume, `passwd`).
pub(crate) fn read_secret(a: &SecretArgs, confirm: bool) -> Result<UnlockSecret, CliError> {
    if let Some(kf) = &a.key_file {
        return UnlockSecret::from_key_file(kf).map_err(secret_err);
    }
    if let Some(pf) = &a.passfile {
        return UnlockSecret::from_passfile(pf).map_err(secret_err);
    }
    if let Some(cmd) = &a.extpass {
        return extpass(cmd);
    }
    ask_passphrase(confirm)
}

/// A recovery key from FILE, or typed on stdin with `-`.
pub(crate) fn read_recovery_key(from: &str) -> Result<RecoveryKey, CliError> {
    let text = if from == "-" {
        if is_terminal() {
            Zeroizing::new(
                rpassword::prompt_password("Recovery key: ")
                    .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?,
            )
        } else {
            let mut s = Zeroizing::new(String::new());
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::new(exit::ERROR, format!("reading stdin: {e}")))?;
            s
        }
    } else {
        Zeroizing::new(std::fs::read_to_string(from).map_err(|e| {
            CliError::new(
                exit::ERROR,
                format!("cannot read the recovery key {from}: {e}"),
            )
        })?)
    };
    RecoveryKey::parse(&text).map_err(|e| CliError::new(exit::WRONG_SECRET, e.to_string()))
}

/// The PKCS#11 provider the options name: the PIN from `--pin-file`,
/// `--pin-env`, the URI, the slot, or else asked on the terminal.
pub(crate) fn pkcs11_provider(
    uri: &str,
    pin_file: Option<&Path>,
    pin_env: Option<&str>,
) -> Result<Pkcs11Provider, CliError> {
    let uri: sealfs::kmsclient::pkcs11::Pkcs11Uri =
        uri.parse()
            .map_err(|e: sealfs::kmsclient::pkcs11::UriError| {
                CliError::new(exit::ERROR, e.to_string())
            })?;
    let pin = match (pin_file, pin_env) {
        (Some(f), _) => Some(SecretSource::File(f.to_path_buf())),
        (None, Some(v)) => Some(SecretSource::Env(v.to_string())),
        (None, None) if uri.pin.is_none() && is_terminal() => {
            let label = uri.token.clone().unwrap_or_else(|| "token".into());
            Some(SecretSource::Value(Zeroizing::new(
                rpassword::prompt_password(format!("PIN for PKCS#11 token {label}: "))
                    .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?,
            )))
        }
        (None, None) => None,
    };
    Ok(Pkcs11Provider::new(uri, pin))
}

fn pkcs11_from(a: &Pkcs11Args) -> Result<Option<Pkcs11Provider>, CliError> {
    match &a.pkcs11 {
        Some(uri) => pkcs11_provider(uri, a.pin_file.as_deref(), a.pin_env.as_deref()).map(Some),
        None => Ok(None),
    }
}

/// The token source the options (or the environment) give.
pub(crate) fn transit_token(
    file: Option<&Path>,
    env: Option<&str>,
    approle: Option<(&Path, &Path, Option<&str>)>,
) -> TokenSource {
    if let Some((role, secret, mount)) = approle {
        return TokenSource::AppRole {
            mount: mount.unwrap_or("approle").to_string(),
            role_id: SecretSource::File(role.to_path_buf()),
            secret_id: SecretSource::File(secret.to_path_buf()),
        };
    }
    if let Some(f) = file {
        return TokenSource::Token(SecretSource::File(f.to_path_buf()));
    }
    let var = env.map(str::to_string).unwrap_or_else(|| {
        if std::env::var_os("BAO_TOKEN").is_none() && std::env::var_os("VAULT_TOKEN").is_some() {
            "VAULT_TOKEN".into()
        } else {
            "BAO_TOKEN".into()
        }
    });
    TokenSource::Token(SecretSource::Env(var))
}

fn env_first(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok())
}

/// The Transit provider the options name (for unlocking: what they leave
/// out comes from the slot; for a new slot, address and key are needed).
pub(crate) fn transit_from(a: &TransitArgs, for_new_slot: bool) -> TransitProvider {
    let approle = a
        .transit_approle_role_id_file
        .as_deref()
        .zip(a.transit_approle_secret_id_file.as_deref())
        .map(|(r, s)| (r, s, a.transit_approle_mount.as_deref()));
    let mut p = TransitProvider::new(transit_token(
        a.transit_token_file.as_deref(),
        a.transit_token_env.as_deref(),
        approle,
    ))
    .ca_file(
        a.transit_ca
            .clone()
            .or_else(|| env_first(&["BAO_CACERT", "VAULT_CACERT"]).map(Into::into)),
    )
    .kv_path(a.transit_kv_path.clone());
    let addr = a.transit_addr.clone().or_else(|| {
        for_new_slot
            .then(|| env_first(&["BAO_ADDR", "VAULT_ADDR"]))
            .flatten()
    });
    if let Some(addr) = addr {
        p = p.address(addr);
    }
    if let Some(k) = &a.transit_key {
        p = p.key(k);
    }
    if let Some(m) = &a.transit_mount {
        p = p.mount(m);
    }
    p
}

/// A passphrase asked on the terminal (or read from a piped stdin) only
/// when a passphrase slot (or a layout-1 passphrase keyring) is actually
/// tried, after every unattended slot failed; asked once.
struct PromptedPassphrase {
    answer: OnceLock<Result<Zeroizing<Vec<u8>>, String>>,
}

impl PromptedPassphrase {
    fn get(&self) -> Result<Passphrase, ProviderError> {
        let a = self.answer.get_or_init(|| match ask_passphrase(false) {
            Ok(UnlockSecret::Passphrase(p)) => Ok(p),
            Ok(UnlockSecret::KeyFile(_)) => Err("not a passphrase".into()),
            Err(e) => Err(e.msg),
        });
        match a {
            Ok(p) => Ok(Passphrase::new(p.clone())),
            Err(e) => Err(ProviderError::Invalid(e.clone())),
        }
    }
}

impl KeyProvider for PromptedPassphrase {
    fn kind(&self) -> &'static ProviderKind {
        &PASSPHRASE
    }

    fn describe(&self) -> String {
        if is_terminal() {
            "a passphrase asked on the terminal".into()
        } else {
            "a passphrase read from stdin".into()
        }
    }

    fn seal(
        &self,
        kek: &sealfs::crypto::SecretKey,
        ctx: &SlotContext,
    ) -> Result<SealedSlot, ProviderError> {
        self.get()?.seal(kek, ctx)
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        self.get()?.unseal(slot, ctx)
    }

    fn v1_kek(
        &self,
        header: &V1Header,
    ) -> Option<Result<sealfs::crypto::SecretKey, ProviderError>> {
        if !matches!(
            header.kek,
            sealfs::format::keyring::KekSource::Passphrase(_)
        ) {
            return None;
        }
        Some(
            self.get()
                .and_then(|p| p.v1_kek(header).expect("a passphrase keyring")),
        )
    }
}

/// What the options say unlocks the volume in `cipherdir`; without an
/// option, the slots that open unattended, then a passphrase asked on the
/// terminal (if there is one).
pub(crate) fn read_unlock(a: &SecretArgs, cipherdir: &Path) -> Result<Unlock, CliError> {
    let mut u = Unlock::new();
    if let Some(kf) = &a.key_file {
        u.push(Box::new(
            UnlockSecret::from_key_file(kf).map_err(secret_err)?,
        ));
    }
    if let Some(pf) = &a.passfile {
        u.push(Box::new(
            UnlockSecret::from_passfile(pf).map_err(secret_err)?,
        ));
    }
    if let Some(cmd) = &a.extpass {
        u.push(Box::new(extpass(cmd)?));
    }
    if let Some(r) = &a.recovery_key {
        u.push(Box::new(read_recovery_key(r)?));
    }
    if let Some(p) = pkcs11_from(&a.pkcs11)? {
        u.push(Box::new(p));
    }
    if a.transit.given() {
        u.push(Box::new(transit_from(&a.transit, false)));
    }
    u.set_keyring_dir(a.keyring_dir.clone());
    if a.any() {
        return Ok(u);
    }
    // Unattended slots first (they need no one), then the terminal.
    if let Ok(root) = sealfs::sys::open_dir_path(a.keyring_dir.as_deref().unwrap_or(cipherdir)) {
        if let Ok(bytes) = sealfs::keyring::read_copy(std::os::fd::AsFd::as_fd(&root), KEYRING_FILE)
        {
            if let Ok(sealfs::format::keyring::KeyringHeader::V2(h)) =
                sealfs::format::keyring::parse_header(&bytes)
            {
                u = sealfs::keyring::provider::unattended(&h.slots);
                u.set_keyring_dir(a.keyring_dir.clone());
            }
        }
    }
    // The terminal, or a passphrase piped on stdin.
    u.push(Box::new(PromptedPassphrase {
        answer: OnceLock::new(),
    }));
    Ok(u)
}

/// Refuses a CIPHERDIR without a volume (exit 23), before asking for a secret.
pub(crate) fn check_is_volume(cipherdir: &Path) -> Result<(), CliError> {
    if !Volume::looks_like_volume(cipherdir) {
        return Err(CliError::new(
            exit::BAD_VOLUME,
            format!(
                "{} is not a sealfs volume (no sealfs.toml); create one with 'sealfs init'",
                cipherdir.display()
            ),
        ));
    }
    Ok(())
}

/// An unmounted volume opened read-write for a key command: unlocked,
/// checked for a rollback (refused unless `--accept-rollback`, then
/// recorded), with its audit log open for the command's records.
pub(crate) struct Offline {
    pub(crate) vol: Arc<Volume>,
    pub(crate) audit: Option<OfflineAudit>,
}

impl Offline {
    /// Key policy for this command (audited when the volume has a log).
    pub(crate) fn keys(&self) -> sealfs::kms::KeyService<'_> {
        match &self.audit {
            Some(a) => a.keys(&self.vol),
            None => sealfs::kms::KeyService::offline(&self.vol),
        }
    }
}

/// Opens the volume in `cipherdir` read-write (offline key commands).
pub(crate) fn open_offline(cipherdir: &Path, secret: &SecretArgs) -> Result<Offline, CliError> {
    check_is_volume(cipherdir)?;
    let u = read_unlock(secret, cipherdir)?;
    open_offline_with(cipherdir, &u, secret.accept_rollback)
}

/// Like [`open_offline`] with providers already gathered.
pub(crate) fn open_offline_with(
    cipherdir: &Path,
    u: &Unlock,
    accept_rollback: bool,
) -> Result<Offline, CliError> {
    let vol = Arc::new(Volume::open(cipherdir, u, false)?);
    let accepted = anchor::check_or_refuse(&vol, accept_rollback)?;
    let audit = OfflineAudit::open(&vol)?;
    let o = Offline { vol, audit };
    if let Some(a) = accepted {
        o.keys().accept_rollback(&a)?;
        eprintln!("sealfs: rollback accepted and recorded: {}", a.problem);
    }
    Ok(o)
}
