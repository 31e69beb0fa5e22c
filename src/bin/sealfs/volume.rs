//! The commands on one unmounted volume: `init`, `passwd`, `rotate`,
//! `rewrap` and `info` (key management through [`sealfs::kms`] and the
//! volume layer; this module only asks for secrets and prints).
//!
//! Owns: these commands' output and the order of their prompts.
//! Must never: change keys except through the key service.

use std::path::{Path, PathBuf};

use serde::Serialize;

use sealfs::crypto::Argon2Params;
use sealfs::ctl::protocol::{RewrapStatus, RotateResult};
use sealfs::kms::KeyService;
use sealfs::volume::walk::RewrapProgress;
use sealfs::volume::Volume;

use crate::args::SecretArgs;
use crate::error::{exit, CliError};
use crate::print_json;
use crate::progress::{progress_bar_for, with_progress, BarKind};
use crate::secret::{check_is_volume, open_offline, read_secret};

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
}

pub(crate) fn cmd_init(
    cipherdir: &Path,
    secret: &SecretArgs,
    params: Argon2Params,
    json: bool,
) -> Result<(), CliError> {
    if Volume::looks_like_volume(cipherdir) {
        return Err(CliError::new(
            exit::ERROR,
            format!("{} already holds a sealfs volume", cipherdir.display()),
        ));
    }
    let s = read_secret(secret, true)?;
    Volume::create(cipherdir, &s, params)?;
    if json {
        let cfg = Volume::read_config(cipherdir)?;
        print_json(&Created {
            cipherdir: cipherdir
                .canonicalize()
                .unwrap_or_else(|_| cipherdir.to_path_buf()),
            volume_id: cfg.volume_id,
            format_version: cfg.format_version,
            primary: 1,
        })?;
    } else {
        eprintln!("sealfs: created volume in {}", cipherdir.display());
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
    let vol = open_offline(cipherdir, secret)?;
    let new_args = SecretArgs {
        passfile: new_passfile,
        extpass: None,
        key_file: new_key_file,
    };
    let new = read_secret(&new_args, true)?;
    KeyService::offline(&vol).change_secret(&new, params)?;
    eprintln!("sealfs: unlock secret changed (keyring re-sealed; no file data touched)");
    Ok(())
}

pub(crate) fn cmd_rotate(
    cipherdir: &Path,
    secret: &SecretArgs,
    json: bool,
) -> Result<(), CliError> {
    let vol = open_offline(cipherdir, secret)?;
    let primary = KeyService::offline(&vol).rotate()?;
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
    json: bool,
) -> Result<(), CliError> {
    let vol = open_offline(cipherdir, secret)?;
    let progress = RewrapProgress::default();
    let r = with_progress(
        progress_bar_for(BarKind::Headers),
        || KeyService::offline(&vol).rewrap(&progress),
        |bar| {
            let r = progress.report();
            bar.set_length(r.total.max(1));
            bar.set_position(r.done);
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
    let vol = Volume::open(cipherdir, &read_secret(secret, false)?, true)?;
    let keys = KeyService::offline(&vol);
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
    Ok(())
}
