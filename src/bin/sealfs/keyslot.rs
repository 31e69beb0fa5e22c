//! `sealfs keyslot list|add|remove|rewrap` and `sealfs upgrade`: the
//! volume's roots of trust (key policy in [`sealfs::kms::keyslots`]; this
//! module gathers the secrets and prints).
//!
//! Owns: the new slot's options, and which secret upgrades a layout-1
//! keyring (the passphrase or key file that opens it, keeping a
//! passphrase's Argon2id cost).
//! Must never: print a secret other than a new recovery key, once.

use std::path::Path;

use serde::Serialize;

use sealfs::ctl::protocol::KeyslotStatus;
use sealfs::format::config::{
    FEATURE_HARD_LINKS, FEATURE_PACKED_TAILS, FEATURE_SEALED_GROUP_STATE, FEATURE_XATTRS,
};
use sealfs::format::keyring::{layout_of, KekSource};
use sealfs::keyring::provider::recovery::RecoveryKey;
use sealfs::keyring::{KeyProvider, Unlock, UnlockSecret, KEYRING_FILE};

use crate::args::{KeyslotCommand, NewSlotArgs, SecretArgs};
use crate::error::{exit, CliError};
use crate::print_json;
use crate::secret::{
    check_is_volume, open_offline, open_offline_with, pkcs11_provider, read_secret, read_unlock,
    transit_token, Offline,
};
use crate::volume::{argon2_params, show_recovery_key};

/// The layout of the keyring in `cipherdir` (from its public header).
fn layout(cipherdir: &Path, keyring_dir: Option<&Path>) -> Result<u16, CliError> {
    let root = sealfs::sys::open_dir_path(keyring_dir.unwrap_or(cipherdir))
        .map_err(|e| CliError::new(exit::BAD_VOLUME, format!("{}: {e}", cipherdir.display())))?;
    let bytes = sealfs::keyring::read_copy(std::os::fd::AsFd::as_fd(&root), KEYRING_FILE)
        .or_else(|_| {
            sealfs::keyring::read_copy(
                std::os::fd::AsFd::as_fd(&root),
                sealfs::keyring::KEYRING_BACKUP,
            )
        })
        .map_err(|e| CliError::new(exit::BAD_VOLUME, format!("cannot read the keyring: {e}")))?;
    layout_of(&bytes).map_err(|e| CliError::new(exit::BAD_VOLUME, e.to_string()))
}

/// Opens a volume for a keyslot change; a layout-1 keyring is upgraded
/// first (with the passphrase or key file that opens it).
fn open_upgraded(cipherdir: &Path, secret: &SecretArgs) -> Result<Offline, CliError> {
    check_is_volume(cipherdir)?;
    if layout(cipherdir, secret.keyring_dir.as_deref())? >= 2 {
        return open_offline(cipherdir, secret);
    }
    let s = read_secret(secret, false)?;
    let o = open_offline_with(
        cipherdir,
        &Unlock::new().with(clone_secret(&s)),
        secret.accept_rollback,
    )?;
    upgrade(&o, &s)?;
    Ok(o)
}

fn clone_secret(s: &UnlockSecret) -> UnlockSecret {
    match s {
        UnlockSecret::Passphrase(p) => UnlockSecret::Passphrase(p.clone()),
        UnlockSecret::KeyFile(k) => UnlockSecret::KeyFile(k.clone()),
    }
}

/// Upgrades the open volume `o` (layout 1) with its own secret `s`.
fn upgrade(o: &Offline, s: &UnlockSecret) -> Result<(), CliError> {
    let params = match o.vol.keyring().read().v1_kdf() {
        Some((KekSource::Passphrase(p), _)) => p,
        _ => sealfs::crypto::Argon2Params::DEFAULT,
    };
    let label = match s {
        UnlockSecret::Passphrase(_) => "passphrase",
        UnlockSecret::KeyFile(_) => "key file",
    };
    let info = o.keys().upgrade(s.provider(params).as_ref(), label)?;
    eprintln!(
        "sealfs: upgraded to keyslots: the keyring is sealed under a new random key, held by keyslot {} ({}); older sealfs versions refuse this volume now",
        info.id, info.description
    );
    Ok(())
}

/// `sealfs upgrade`: a layout-1 keyring gets keyslots, and a volume made
/// before hard links or extended attributes gains those feature flags
/// (`sealfs.toml` rewritten durably: temporary file, fsync, rename; no
/// other file is touched, docs/FORMAT.md §1.1). Nothing to do is an error.
pub(crate) fn cmd_upgrade(cipherdir: &Path, secret: &SecretArgs) -> Result<(), CliError> {
    check_is_volume(cipherdir)?;
    let s = read_secret(secret, false)?;
    let o = open_offline_with(
        cipherdir,
        &Unlock::new().with(clone_secret(&s)),
        secret.accept_rollback,
    )?;
    let layout1 = layout(cipherdir, secret.keyring_dir.as_deref())? < 2;
    if layout1 {
        upgrade(&o, &s)?;
    }
    let added = o
        .vol
        .update_config(|c| {
            // Packed tails need sealed group states: a volume without them
            // (the first content format) does not get the flag.
            let packs = c.has_feature(FEATURE_SEALED_GROUP_STATE);
            let missing: Vec<String> = [FEATURE_HARD_LINKS, FEATURE_XATTRS, FEATURE_PACKED_TAILS]
                .iter()
                .filter(|f| !c.has_feature(f) && (packs || **f != FEATURE_PACKED_TAILS))
                .map(|f| f.to_string())
                .collect();
            c.features.extend(missing.iter().cloned());
            Ok(missing)
        })
        .map_err(|e| CliError::new(exit::ERROR, format!("cannot update sealfs.toml: {e}")))?;
    if !added.is_empty() {
        eprintln!(
            "sealfs: added the feature{} {} (they work from the next mount; older sealfs versions refuse this volume now)",
            if added.len() > 1 { "s" } else { "" },
            added.join(", ")
        );
    } else if !layout1 {
        return Err(CliError::new(
            exit::ERROR,
            format!(
                "{} is up to date: it has keyslots, hard links, extended attributes and every content feature it can take",
                cipherdir.display()
            ),
        ));
    }
    Ok(())
}

/// What `keyslot list --json` prints.
#[derive(Serialize)]
struct Listed {
    layout: u16,
    keyslots: Vec<KeyslotStatus>,
}

/// The provider of the new slot, and the recovery key if it is one.
fn new_provider(
    n: &NewSlotArgs,
    unlock: &SecretArgs,
) -> Result<(Box<dyn KeyProvider>, Option<RecoveryKey>), CliError> {
    let k = &n.kind;
    let params = argon2_params(n.new_kdf_memory_kib, n.new_kdf_iterations);
    if let Some(f) = &k.new_passfile {
        let s = UnlockSecret::from_passfile(f)
            .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        return Ok((s.provider(params), None));
    }
    if let Some(f) = &k.new_key_file {
        let s = UnlockSecret::from_key_file(f)
            .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        return Ok((s.provider(params), None));
    }
    if k.new_recovery_key {
        let r = RecoveryKey::generate().map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        let copy = RecoveryKey::parse(&r.display())
            .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        return Ok((Box::new(copy), Some(r)));
    }
    if let Some(uri) = &k.new_pkcs11 {
        let p = pkcs11_provider(uri, n.new_pin_file.as_deref(), n.new_pin_env.as_deref())?;
        return Ok((Box::new(p), None));
    }
    if let Some(key) = &k.new_transit_key {
        let t = &unlock.transit;
        let token = if n.new_transit_token_file.is_some() || n.new_transit_token_env.is_some() {
            transit_token(
                n.new_transit_token_file.as_deref(),
                n.new_transit_token_env.as_deref(),
                None,
            )
        } else {
            let approle = t
                .transit_approle_role_id_file
                .as_deref()
                .zip(t.transit_approle_secret_id_file.as_deref())
                .map(|(r, s)| (r, s, t.transit_approle_mount.as_deref()));
            transit_token(
                t.transit_token_file.as_deref(),
                t.transit_token_env.as_deref(),
                approle,
            )
        };
        let addr = n
            .new_transit_addr
            .clone()
            .or_else(|| t.transit_addr.clone())
            .or_else(|| std::env::var("BAO_ADDR").ok())
            .or_else(|| std::env::var("VAULT_ADDR").ok())
            .ok_or_else(|| {
                CliError::new(
                    exit::ERROR,
                    "a Transit slot needs the server: --new-transit-addr (or BAO_ADDR)",
                )
            })?;
        let mut p = sealfs::keyring::provider::transit::TransitProvider::new(token)
            .address(addr)
            .key(key)
            .ca_file(n.new_transit_ca.clone().or_else(|| t.transit_ca.clone()))
            .kv_path(n.new_transit_kv_path.clone());
        if let Some(m) = &n.new_transit_mount {
            p = p.mount(m);
        }
        return Ok((Box::new(p), None));
    }
    Err(CliError::new(exit::ERROR, "no new keyslot given"))
}

pub(crate) fn cmd_keyslot(cmd: &KeyslotCommand) -> Result<(), CliError> {
    match cmd {
        KeyslotCommand::List {
            cipherdir,
            json,
            keyring_dir,
        } => {
            check_is_volume(cipherdir)?;
            let root = sealfs::sys::open_dir_path(keyring_dir.as_deref().unwrap_or(cipherdir))
                .map_err(|e| CliError::new(exit::BAD_VOLUME, e.to_string()))?;
            let bytes = sealfs::keyring::read_copy(std::os::fd::AsFd::as_fd(&root), KEYRING_FILE)
                .map_err(|e| {
                CliError::new(exit::BAD_VOLUME, format!("cannot read the keyring: {e}"))
            })?;
            let slots = sealfs::keyring::slots_of(&bytes)?;
            let listed = Listed {
                layout: if slots.is_some() { 2 } else { 1 },
                keyslots: slots
                    .unwrap_or_default()
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            };
            if *json {
                return print_json(&listed);
            }
            if listed.layout == 1 {
                println!("no keyslots: the keyring is layout 1 (one passphrase or key file); 'sealfs upgrade' adds them");
            }
            for s in &listed.keyslots {
                println!(
                    "{:>3}  {:<12} {:<14} {}",
                    s.id,
                    s.provider,
                    format!("{:?}", s.label),
                    s.description
                );
            }
            Ok(())
        }
        KeyslotCommand::Add {
            cipherdir,
            secret,
            new,
            label,
            json,
        } => {
            let (provider, recovery) = new_provider(new, secret)?;
            let o = open_upgraded(cipherdir, secret)?;
            let label = if label.is_empty() && recovery.is_some() {
                "recovery"
            } else {
                label.as_str()
            };
            let info = o.keys().add_keyslot(provider.as_ref(), label)?;
            if *json {
                #[derive(Serialize)]
                struct Added {
                    keyslot: KeyslotStatus,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    recovery_key: Option<String>,
                }
                print_json(&Added {
                    recovery_key: recovery.as_ref().map(|r| r.display().to_string()),
                    keyslot: info.into(),
                })?;
            } else {
                eprintln!(
                    "sealfs: added keyslot {} ({}: {})",
                    info.id, info.provider, info.description
                );
                if let Some(r) = &recovery {
                    show_recovery_key(r, info.id);
                }
            }
            Ok(())
        }
        KeyslotCommand::Remove {
            cipherdir,
            slot,
            secret,
        } => {
            let o = open_offline(cipherdir, secret)?;
            let info = o.keys().remove_keyslot(*slot)?;
            eprintln!(
                "sealfs: removed keyslot {} ({}: {}); its secret no longer opens this keyring",
                info.id, info.provider, info.description
            );
            Ok(())
        }
        KeyslotCommand::Rewrap {
            cipherdir,
            slot,
            secret,
        } => {
            check_is_volume(cipherdir)?;
            let u = read_unlock(secret, cipherdir)?;
            let o = open_offline_with(cipherdir, &u, secret.accept_rollback)?;
            let p = crate::secret::transit_from(&secret.transit, false);
            let (before, after) = o.keys().rewrap_keyslot(*slot, &p)?;
            eprintln!(
                "sealfs: keyslot {} re-wrapped: {} -> {}",
                after.id, before.description, after.description
            );
            Ok(())
        }
    }
}
