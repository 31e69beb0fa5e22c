//! `sealfs ctl key …`: named keys of a mounted volume (create or import,
//! list, aliases, subtree assignment) and `census --by-key`.
//!
//! Owns: reading an imported key file (exactly 32 bytes, zeroized after
//! sending) and the summaries of these commands.
//! Must never: print key material, or decide key policy (the daemon does).

use std::collections::BTreeMap;
use std::io::Read;

use zeroize::Zeroizing;

use sealfs::ctl::protocol::{
    CensusResult, KeyChanged, KeyCreated, KeyListResult, KeyMaterial, KeyPolicyResult, Op,
};

use crate::args::{AliasCommand, KeyCommand, PolicyCommand};
use crate::ctl::{ctl_call, fmt_time, print_schedule, show, Target};
use crate::error::{exit, CliError};

/// The 32 bytes of FILE as hex, in zeroizing buffers; anything but exactly
/// 32 bytes is refused.
fn read_material(path: &std::path::Path) -> Result<KeyMaterial, CliError> {
    let err = |m: String| CliError::new(exit::ERROR, format!("{}: {m}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(33));
    f.by_ref()
        .take(33)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() != 32 {
        return Err(err(format!(
            "key material must be exactly 32 bytes ({} read)",
            if bytes.len() > 32 {
                "more".to_string()
            } else {
                bytes.len().to_string()
            }
        )));
    }
    let mut hex = Zeroizing::new(String::with_capacity(64));
    for b in bytes.iter() {
        hex.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
        hex.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
    }
    Ok(KeyMaterial(std::mem::take(&mut *hex)))
}

pub(crate) fn cmd_key(t: &Target, json: bool, k: &KeyCommand) -> Result<(), CliError> {
    match k {
        KeyCommand::Create {
            alias,
            description,
            rotation_period,
            allow_short,
            import,
            expires,
        } => {
            let rotation_period = match rotation_period {
                Some(d) => Some(crate::duration::wire(
                    crate::duration::rotation_period(*d, *allow_short)
                        .map_err(|e| CliError::new(exit::ERROR, e))?,
                )),
                None => None,
            };
            let material = import.as_deref().map(read_material).transpose()?;
            let op = Op::KeyCreate {
                alias: alias.clone(),
                description: description.clone(),
                rotation_period,
                material,
                expires: expires.clone(),
            };
            let c: KeyCreated = ctl_call(t, op)?;
            show(json, &c, |c| println!("{}", c.id))
        }
        KeyCommand::List => {
            let l: KeyListResult = ctl_call(t, Op::KeyList)?;
            show(json, &l, print_keys)
        }
        KeyCommand::Alias(AliasCommand::Add { alias }) => {
            let c: KeyChanged = ctl_call(
                t,
                Op::KeyAliasAdd {
                    alias: alias.clone(),
                },
            )?;
            show(json, &c, |c| {
                println!("key {}: aliases {}", c.id, c.aliases.join(", "))
            })
        }
        KeyCommand::Alias(AliasCommand::Remove { alias }) => {
            let c: KeyChanged = ctl_call(
                t,
                Op::KeyAliasRemove {
                    alias: alias.clone(),
                },
            )?;
            show(json, &c, |c| {
                println!("key {}: aliases {}", c.id, c.aliases.join(", "))
            })
        }
        KeyCommand::Assign { path, key } => {
            let target = Target {
                socket: t.socket.clone(),
                check: t.check.clone(),
                key: Some(key.clone()),
            };
            let c: KeyChanged = ctl_call(&target, Op::KeyAssign { path: path.clone() })?;
            show(json, &c, |c| {
                println!(
                    "new entries at and below {path} get key {} ({})",
                    c.id,
                    c.aliases.join(", ")
                )
            })
        }
        KeyCommand::Policy(PolicyCommand::Get) => {
            let p: KeyPolicyResult = ctl_call(t, Op::KeyPolicyGet)?;
            show(json, &p, |p| {
                match &p.policy {
                Some(text) => println!("{text}"),
                None => println!(
                    "key {}: no policy (the mount owner and root administer it; grants decide its use)",
                    p.id
                ),
            }
            })
        }
        KeyCommand::Policy(PolicyCommand::Set { file }) => {
            let policy = match file.as_str() {
                "none" => None,
                "-" => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| CliError::new(exit::ERROR, format!("stdin: {e}")))?;
                    Some(s)
                }
                f => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| CliError::new(exit::ERROR, format!("{f}: {e}")))?,
                ),
            };
            let p: KeyPolicyResult = ctl_call(t, Op::KeyPolicySet { policy })?;
            show(json, &p, |p| match &p.sha256 {
                Some(h) => println!("key {}: policy set (sha256 {h})", p.id),
                None => println!("key {}: policy cleared", p.id),
            })
        }
        KeyCommand::Unassign { path } => {
            let c: KeyChanged = ctl_call(t, Op::KeyUnassign { path: path.clone() })?;
            show(json, &c, |c| {
                println!(
                    "new entries at and below {path} get key {} ({}) again",
                    c.id,
                    c.aliases.join(", ")
                )
            })
        }
    }
}

fn print_keys(l: &KeyListResult) {
    for k in &l.keys {
        println!(
            "key {} {}{} {} ({}), primary v{}, created {}",
            k.id,
            k.aliases.join(", "),
            if k.default { " [default]" } else { "" },
            k.state,
            k.origin,
            k.primary,
            fmt_time(k.created)
        );
        if !k.description.is_empty() {
            println!("  {}", k.description);
        }
        for v in &k.versions {
            let counts = match (v.files, v.dirs) {
                (Some(f), Some(d)) => format!(" files {f} dirs {d}"),
                _ => String::new(),
            };
            println!(
                "  v{} {:<17} created {}{}",
                v.version,
                v.state.as_str(),
                fmt_time(v.created),
                counts
            );
        }
        print!("  ");
        print_schedule(&k.rotation_period, k.next_rotation);
        if let Some(e) = k.expires {
            println!("  expires {}", fmt_time(e));
        }
        if let Some(d) = k.deletion_due {
            println!("  destroyed at {}", fmt_time(d));
        }
    }
    for a in &l.assignments {
        println!("assignment: directory {} -> key {}", a.dir_id, a.key_id);
    }
}

/// Headers and records per key (`census --by-key`): the census's counts
/// per version, summed over each key's versions.
#[derive(serde::Serialize)]
struct ByKey {
    key: u32,
    aliases: Vec<String>,
    files: u64,
    dirs: u64,
    unreadable: u64,
}

pub(crate) fn census_by_key(t: &Target, json: bool, c: &CensusResult) -> Result<(), CliError> {
    let l: KeyListResult = ctl_call(t, Op::KeyList)?;
    let owner: BTreeMap<u32, u32> = l
        .keys
        .iter()
        .flat_map(|k| k.versions.iter().map(move |v| (v.version, k.id)))
        .collect();
    let mut rows: Vec<ByKey> = l
        .keys
        .iter()
        .map(|k| ByKey {
            key: k.id,
            aliases: k.aliases.clone(),
            files: 0,
            dirs: 0,
            unreadable: 0,
        })
        .collect();
    let mut add = |v: &u32, n: u64, pick: fn(&mut ByKey) -> &mut u64| {
        if let Some(r) = owner
            .get(v)
            .and_then(|id| rows.iter_mut().find(|r| r.key == *id))
        {
            *pick(r) += n;
        }
    };
    for (v, n) in &c.files {
        add(v, *n, |r| &mut r.files);
    }
    for (v, n) in &c.dirs {
        add(v, *n, |r| &mut r.dirs);
    }
    for (v, n) in &c.unreadable_by_version {
        add(v, *n, |r| &mut r.unreadable);
    }
    show(json, &rows, |rows| {
        println!(
            "{:>4}  {:<20}  {:>10}  {:>10}  {:>10}",
            "key", "aliases", "files", "dirs", "unreadable"
        );
        for r in rows {
            println!(
                "{:>4}  {:<20}  {:>10}  {:>10}  {:>10}",
                r.key,
                r.aliases.join(","),
                r.files,
                r.dirs,
                r.unreadable
            );
        }
    })
}
