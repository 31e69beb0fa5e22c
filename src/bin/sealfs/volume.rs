//! The commands on one unmounted volume: `init`, `passwd`, `rotate`,
//! `rewrap` and `info` (key management through [`sealfs::kms`] and the
//! volume layer; this module only asks for secrets and prints).

use std::path::{Path, PathBuf};

use sealfs::crypto::Argon2Params;
use sealfs::kms::KeyService;
use sealfs::volume::Volume;

use crate::args::SecretArgs;
use crate::error::{exit, CliError};
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
        let dir = cipherdir
            .canonicalize()
            .unwrap_or_else(|_| cipherdir.to_path_buf());
        println!(
            "{}",
            serde_json::json!({"cipherdir": dir, "volume_id": cfg.volume_id, "format_version": cfg.format_version, "primary": 1})
        );
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
    let v = KeyService::offline(&vol).rotate()?;
    if json {
        println!("{}", serde_json::json!({"primary": v}));
    } else {
        eprintln!("sealfs: key version {v} is now primary");
    }
    Ok(())
}

pub(crate) fn cmd_rewrap(
    cipherdir: &Path,
    secret: &SecretArgs,
    json: bool,
) -> Result<(), CliError> {
    let vol = open_offline(cipherdir, secret)?;
    let progress = sealfs::volume::walk::RewrapProgress::default();
    with_progress(
        progress_bar_for(BarKind::Headers),
        || vol.rewrap_all(&progress),
        |bar| {
            let r = progress.report();
            bar.set_length(r.total.max(1));
            bar.set_position(r.done);
        },
    )??;
    let r = progress.report();
    if json {
        println!(
            "{}",
            serde_json::to_value(&r).map_err(|e| CliError::new(exit::ERROR, e.to_string()))?
        );
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

pub(crate) fn cmd_info(cipherdir: &Path, secret: &SecretArgs, json: bool) -> Result<(), CliError> {
    check_is_volume(cipherdir)?;
    let vol = Volume::open(cipherdir, &read_secret(secret, false)?, true)?;
    let census = vol.census()?;
    let kr = vol.keyring().read();
    let versions: Vec<serde_json::Value> = kr
                    .versions()
                    .iter()
                    .map(|v| serde_json::json!({"version": v.version, "state": format!("{:?}", v.state).to_lowercase(), "created": v.created, "primary": v.version == kr.primary(), "files": census.files.get(&v.version).copied().unwrap_or(0), "dirs": census.dirs.get(&v.version).copied().unwrap_or(0)}))
                    .collect();
    let cfg = vol.config();
    let out = serde_json::json!({"volume_id": cfg.volume_id, "format_version": cfg.format_version, "features": cfg.features, "rotation_period": cfg.rotation_period, "disabled": kr.disabled(), "primary": kr.primary(), "versions": versions, "unreadable": census.unreadable});
    if json {
        println!("{out}");
    } else {
        println!(
            "volume {} (format {}), primary key version {}{}",
            cfg.volume_id,
            cfg.format_version,
            kr.primary(),
            if kr.disabled() { ", DISABLED" } else { "" }
        );
        for v in versions {
            println!(
                "  v{:<4} {:<17} files {:<8} dirs {}",
                v["version"],
                v["state"].as_str().unwrap_or(""),
                v["files"],
                v["dirs"]
            );
        }
        if census.unreadable > 0 {
            println!("  {} headers unreadable", census.unreadable);
        }
    }
    Ok(())
}
