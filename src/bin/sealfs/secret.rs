//! Reading the unlock secret (`--passfile`, `--extpass`, `--key-file`, or
//! the terminal) and opening a volume with it.
//!
//! Owns: where a secret comes from and the passphrase prompt.
//! Must never: keep a secret longer than the call that needs it, or print one.

use std::path::Path;

use zeroize::Zeroizing;

use sealfs::keyring::{SecretError, UnlockSecret};
use sealfs::volume::Volume;

use crate::args::SecretArgs;
use crate::error::{exit, CliError};

pub(crate) fn read_secret(a: &SecretArgs, confirm: bool) -> Result<UnlockSecret, CliError> {
    let secret_err = |e: SecretError| CliError::new(exit::ERROR, e.to_string());
    if let Some(kf) = &a.key_file {
        return UnlockSecret::from_key_file(kf).map_err(secret_err);
    }
    if let Some(pf) = &a.passfile {
        return UnlockSecret::from_passfile(pf).map_err(secret_err);
    }
    if let Some(cmd) = &a.extpass {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| {
                CliError::new(exit::ERROR, format!("cannot run --extpass command: {e}"))
            })?;
        if !out.status.success() {
            return Err(CliError::new(
                exit::ERROR,
                format!("--extpass command failed ({})", out.status),
            ));
        }
        let stdout = Zeroizing::new(out.stdout);
        return UnlockSecret::from_passphrase_line(&stdout).map_err(secret_err);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::new(
            exit::ERROR,
            "no passphrase: stdin is not a terminal; use --passfile, --extpass or --key-file",
        ));
    }
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

/// Opens the volume in `cipherdir` read-write (offline key commands).
pub(crate) fn open_offline(cipherdir: &Path, secret: &SecretArgs) -> Result<Volume, CliError> {
    check_is_volume(cipherdir)?;
    let s = read_secret(secret, false)?;
    Ok(Volume::open(cipherdir, &s, false)?)
}
