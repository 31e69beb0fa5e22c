//! The commands on one unmounted volume: `init`, `passwd`, `rotate`,
//! `rewrap` and `info` (key management through [`sealfs::kms`] and the
//! volume layer; this module only asks for secrets and prints). Keyslots
//! and `upgrade` are in `keyslot`.
//!
//! Owns: these commands' output and the order of their prompts.
//! Must never: change keys except through the key service.

use std::path::{Path, PathBuf};

use serde::Serialize;

use sealfs::crypto::Argon2Params;
use sealfs::ctl::protocol::{KeyslotStatus, RewrapStatus, RotateResult, UnlockedSlot};
use sealfs::keyring::provider::recovery::RecoveryKey;
use sealfs::keyring::KeyProvider;
use sealfs::kms::KeyService;
use sealfs::volume::walk::RewrapProgress;
use sealfs::volume::Volume;

use crate::args::{InitSecretArgs, SecretArgs};
use crate::error::{exit, CliError};
use crate::print_json;
use crate::progress::{progress_bar_for, with_progress, BarKind};
use crate::secret::{
    check_is_volume, open_offline, pkcs11_provider, read_secret, read_unlock, transit_from,
};

/// Argon2id parameters from the `--kdf-*` options.
pub(crate) fn argon2_params(memory_kib: u32, iterations: u32) -> Argon2Params {
    Argon2Params {
        memory_kib,
        iterations,
        parallelism: Argon2Params::DEFAULT.parallelism,
    }
}

/// What `sealfs init --json` prints.
#[derive(Serialize)]
struct Created {
    cipherdir: PathBuf,
    volume_id: String,
    format_version: u32,
    primary: u32,
    keyslots: Vec<KeyslotStatus>,
    /// Shown once, only when a recovery-key slot was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_key: Option<String>,
}

/// Prints a new recovery key once: the key alone on stdout (so `>` can
/// catch it), how to keep it on stderr.
pub(crate) fn show_recovery_key(k: &RecoveryKey, slot: u32) {
    eprintln!(
        "sealfs: recovery key of keyslot {slot} (shown once, never stored anywhere by sealfs):"
    );
    println!("{}", &*k.display());
    eprintln!(
        "sealfs: write it down or print it, and keep it offline (a safe, a sealed envelope),\n\
         apart from the volume and its other secrets. On its own it unlocks the volume:\n\
         sealfs mount CIPHERDIR MNT --recovery-key FILE (or '-' to type it). It does not\n\
         expire; remove its slot ('sealfs keyslot remove') if it is ever exposed."
    );
}

pub(crate) fn cmd_init(
    cipherdir: &Path,
    a: &InitSecretArgs,
    params: Argon2Params,
    json: bool,
) -> Result<(), CliError> {
    if Volume::looks_like_volume(cipherdir) {
        return Err(CliError::new(
            exit::ERROR,
            format!("{} already holds a sealfs volume", cipherdir.display()),
        ));
    }
    let mut slots: Vec<(Box<dyn KeyProvider>, &str)> = Vec::new();
    let secret = SecretArgs {
        passfile: a.passfile.clone(),
        extpass: a.extpass.clone(),
        key_file: a.key_file.clone(),
        ..SecretArgs::default()
    };
    if a.passfile.is_some() || a.extpass.is_some() {
        let s = read_secret(
            &SecretArgs {
                key_file: None,
                ..secret.clone()
            },
            true,
        )?;
        slots.push((s.provider(params), "passphrase"));
    }
    if a.key_file.is_some() {
        let s = read_secret(
            &SecretArgs {
                passfile: None,
                extpass: None,
                ..secret
            },
            true,
        )?;
        slots.push((s.provider(params), "key file"));
    }
    if let Some(uri) = &a.pkcs11.pkcs11 {
        let p = pkcs11_provider(
            uri,
            a.pkcs11.pin_file.as_deref(),
            a.pkcs11.pin_env.as_deref(),
        )?;
        slots.push((Box::new(p), "pkcs11"));
    }
    if a.transit.given() {
        slots.push((Box::new(transit_from(&a.transit, true)), "transit"));
    }
    if slots.is_empty() {
        // Nothing but (maybe) a recovery key: a passphrase first.
        let s = read_secret(&SecretArgs::default(), true)?;
        slots.push((s.provider(params), "passphrase"));
    }
    let recovery = if a.recovery_key {
        Some(RecoveryKey::generate().map_err(|e| CliError::new(exit::ERROR, e.to_string()))?)
    } else {
        None
    };
    let mut refs: Vec<(&dyn KeyProvider, &str)> =
        slots.iter().map(|(p, l)| (p.as_ref(), *l)).collect();
    if let Some(r) = &recovery {
        refs.push((r, "recovery"));
    }
    Volume::create_with_keyring_dir(cipherdir, &refs, a.keyring_dir.as_deref())?;
    let (cfg, keyslots) = {
        let cfg = Volume::read_config(cipherdir)?;
        let root = sealfs::sys::open_dir_path(a.keyring_dir.as_deref().unwrap_or(cipherdir))
            .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        let bytes = sealfs::keyring::read_copy(
            std::os::fd::AsFd::as_fd(&root),
            sealfs::keyring::KEYRING_FILE,
        )
        .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        let slots = sealfs::keyring::slots_of(&bytes)?.unwrap_or_default();
        (cfg, slots)
    };
    let recovery_slot = keyslots.last().map_or(0, |s| s.id);
    if json {
        print_json(&Created {
            cipherdir: cipherdir
                .canonicalize()
                .unwrap_or_else(|_| cipherdir.to_path_buf()),
            volume_id: cfg.volume_id,
            format_version: cfg.format_version,
            primary: 1,
            keyslots: keyslots.into_iter().map(Into::into).collect(),
            recovery_key: recovery.as_ref().map(|r| r.display().to_string()),
        })?;
    } else {
        eprintln!("sealfs: created volume in {}", cipherdir.display());
        for s in &keyslots {
            eprintln!("  keyslot {} {}: {}", s.id, s.provider, s.description);
        }
        if let Some(r) = &recovery {
            show_recovery_key(r, recovery_slot);
        }
    }
    Ok(())
}

pub(crate) fn cmd_passwd(
    cipherdir: &Path,
    secret: &SecretArgs,
    new_passfile: Option<PathBuf>,
    new_key_file: Option<PathBuf>,
    params: Argon2Params,
) -> Result<(), CliError> {
    let o = open_offline(cipherdir, secret)?;
    let new_args = SecretArgs {
        passfile: new_passfile,
        key_file: new_key_file,
        ..SecretArgs::default()
    };
    let new = read_secret(&new_args, true)?;
    o.keys().change_secret(&new, params)?;
    eprintln!("sealfs: unlock secret changed (keyring re-sealed; no file data touched)");
    Ok(())
}

pub(crate) fn cmd_rotate(
    cipherdir: &Path,
    secret: &SecretArgs,
    key: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let o = open_offline(cipherdir, secret)?;
    let keys = o.keys();
    let primary = keys.rotate_key(keys.resolve_key(key)?)?;
    if json {
        print_json(&RotateResult { primary })?;
    } else {
        eprintln!("sealfs: key version {primary} is now primary");
    }
    Ok(())
}

pub(crate) fn cmd_rewrap(
    cipherdir: &Path,
    secret: &SecretArgs,
    key: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let o = open_offline(cipherdir, secret)?;
    let only = key.map(|k| o.keys().resolve_key(Some(k))).transpose()?;
    let progress = RewrapProgress::default();
    let r = with_progress(
        progress_bar_for(BarKind::Headers),
        || o.keys().rewrap_key(only, &progress),
        |bar| {
            let r = progress.report();
            crate::progress::update(bar, r.done, r.total);
        },
    )??;
    if json {
        print_json(&RewrapStatus::from(r.clone()))?;
    } else {
        eprintln!(
            "sealfs: rewrap done: {} visited, {} re-wrapped, {} failed",
            r.done, r.rewrapped, r.failed
        );
    }
    if r.failed > 0 {
        return Err(CliError::new(
            exit::ERROR,
            format!(
                "{} headers could not be re-wrapped (see warnings)",
                r.failed
            ),
        ));
    }
    Ok(())
}

/// What `sealfs info --json` prints.
#[derive(Serialize)]
struct Info {
    volume_id: String,
    format_version: u32,
    features: Vec<String>,
    rotation_period: Option<String>,
    disabled: bool,
    primary: u32,
    versions: Vec<InfoVersion>,
    unreadable: u64,
    keyring_layout: u16,
    keyring_generation: u32,
    unlocked_by: Option<UnlockedSlot>,
    keyslots: Vec<KeyslotStatus>,
    /// What the rollback checks found: null when none ran (layout 1), else
    /// "ok" or the problem.
    rollback_check: Option<String>,
}

/// One key version in [`Info`], with its header counts.
#[derive(Serialize)]
struct InfoVersion {
    version: u32,
    /// The state's Rust name in lower case (`pendingdeletion`; the control
    /// protocol says `pending_deletion`).
    state: String,
    created: u64,
    primary: bool,
    files: u64,
    dirs: u64,
}

pub(crate) fn cmd_info(cipherdir: &Path, secret: &SecretArgs, json: bool) -> Result<(), CliError> {
    check_is_volume(cipherdir)?;
    let vol = Volume::open(cipherdir, &read_unlock(secret, cipherdir)?, true)?;
    let keys = KeyService::offline(&vol);
    let rollback_check = match sealfs::kms::anchor::check(&vol) {
        Ok(r) if r.layout < 2 => None,
        Ok(r) => Some(r.problem.unwrap_or_else(|| "ok".into())),
        Err(e) => Some(format!("not checked: {e}")),
    };
    let (keyring_layout, keyring_generation, unlocked_by, keyslots) = {
        let kr = vol.keyring().read();
        (
            kr.layout(),
            kr.generation(),
            kr.unlocked_by().cloned().map(Into::into),
            kr.slots().into_iter().map(Into::into).collect(),
        )
    };
    let census = keys.census()?;
    let status = keys.status();
    let cfg = vol.config();
    let info = Info {
        volume_id: cfg.volume_id,
        format_version: cfg.format_version,
        features: cfg.features,
        rotation_period: status.rotation_period,
        disabled: status.disabled,
        primary: status.primary,
        versions: status
            .versions
            .iter()
            .map(|v| InfoVersion {
                version: v.version,
                state: format!("{:?}", v.state).to_lowercase(),
                created: v.created,
                primary: v.primary,
                files: census.files.get(&v.version).copied().unwrap_or(0),
                dirs: census.dirs.get(&v.version).copied().unwrap_or(0),
            })
            .collect(),
        unreadable: census.unreadable,
        keyring_layout,
        keyring_generation,
        unlocked_by,
        keyslots,
        rollback_check,
    };
    if json {
        return print_json(&info);
    }
    println!(
        "volume {} (format {}), primary key version {}{}",
        info.volume_id,
        info.format_version,
        info.primary,
        if info.disabled { ", DISABLED" } else { "" }
    );
    for v in &info.versions {
        println!(
            "  v{} {:<17} files {} dirs {}",
            v.version, v.state, v.files, v.dirs
        );
    }
    if info.unreadable > 0 {
        println!("  {} headers unreadable", info.unreadable);
    }
    println!(
        "keyring layout {}, generation {}",
        info.keyring_layout, info.keyring_generation
    );
    for s in &info.keyslots {
        let used = info.unlocked_by.as_ref().and_then(|u| u.slot) == Some(s.id);
        println!(
            "  keyslot {} {:<12} {:<12} {}{}",
            s.id,
            s.provider,
            format!("{:?}", s.label),
            s.description,
            if used { "  (unlocked this)" } else { "" }
        );
    }
    if let Some(r) = &info.rollback_check {
        println!("rollback check: {r}");
    }
    Ok(())
}
