//! `sealfs ctl …`: key management of a mounted volume through its control
//! socket; prints a summary of each response (or, with `--json`, the
//! result). Requests and results are the typed ones of
//! [`sealfs::ctl::protocol`].
//!
//! Owns: the summaries `sealfs ctl` prints, the deletion confirmation
//! prompt, and the rewrap progress polling.
//! Must never: build or read JSON by hand (the protocol types do), or decide
//! key policy (the daemon does).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use sealfs::ctl;
use sealfs::ctl::client::{CallError, ServerCheck};
use sealfs::ctl::protocol::{
    CancelDeletionResult, CensusResult, DisabledResult, KeyChanged, MetricsResult, Op, Request,
    RewrapStarted, RotateResult, RotationPeriodResult, ScheduleDeletionResult, StatusResult,
    TrimResult, UntrimResult,
};

use crate::args::{CtlArgs, CtlCommand, Period};
use crate::error::{exit, CliError};
use crate::print_json;
use crate::progress::{progress_bar_for, BarKind};

/// A control socket and who may serve it (root or the mount owner).
pub(crate) struct Target {
    /// The socket's path.
    pub(crate) socket: PathBuf,
    /// The check of the server's `SO_PEERCRED`.
    pub(crate) check: ServerCheck,
    /// The key requests address (`--key`; None: the default key).
    pub(crate) key: Option<String>,
}

impl Target {
    /// The socket of the mount at `mountpoint` (the mount owner's default
    /// path: [`socket_for_mount`]); the server must be root or the user
    /// who mounted it.
    pub(crate) fn of_mount(mountpoint: &Path, code: u8) -> Result<Target, CliError> {
        let mp = mountpoint
            .canonicalize()
            .map_err(|e| CliError::new(code, format!("{}: {e}", mountpoint.display())))?;
        let socket = socket_for_mount(&mp, code)?;
        let check = ServerCheck::for_mount(&mp, &socket).map_err(|e| {
            CliError::new(
                code,
                format!(
                    "cannot reach the control socket {}: {e} (is the volume mounted?)",
                    socket.display()
                ),
            )
        })?;
        Ok(Target {
            socket,
            check,
            key: None,
        })
    }

    /// The socket at `socket` (`--socket`).
    pub(crate) fn of_socket(socket: PathBuf, code: u8) -> Result<Target, CliError> {
        let check = ServerCheck::for_socket(&socket).map_err(|e| {
            CliError::new(
                code,
                format!("cannot use the control socket {}: {e}", socket.display()),
            )
        })?;
        Ok(Target {
            socket,
            check,
            key: None,
        })
    }
}

/// The error of a failed call, as `sealfs ctl` reports it.
pub(crate) fn call_error(socket: &Path, e: CallError) -> CliError {
    match e {
        CallError::Remote(e) => CliError::new(exit::ERROR, format!("{} ({})", e.message, e.code)),
        e @ CallError::UntrustedServer { .. } => {
            CliError::new(exit::ERROR, format!("{}: {e}", socket.display()))
        }
        CallError::Io(e) => CliError::new(
            exit::ERROR,
            format!(
                "cannot reach the control socket {}: {e} (is the volume mounted?)",
                socket.display()
            ),
        ),
    }
}

/// Sends `op` and returns its typed result.
pub(crate) fn ctl_call<R: DeserializeOwned>(t: &Target, op: Op) -> Result<R, CliError> {
    let request = Request::new(op).with_key(t.key.clone());
    ctl::client::call_checked(&t.socket, &request, &t.check).map_err(|e| call_error(&t.socket, e))
}

/// A time as people read it: RFC 3339 UTC (`--json` keeps the epoch
/// seconds, with this form beside them).
pub(crate) fn fmt_time(secs: u64) -> String {
    sealfs::format::grants::format_utc(secs)
}

/// The control socket of the sealfs mount at `m`, for whoever asks: the
/// mount's owner (`user_id=` in /proc/mounts) made it in *their* default
/// directory (`/run/sealfs` for root, `/run/user/UID/sealfs` or
/// `/tmp/sealfs-UID` otherwise), named after the mount point, so a
/// grantee finds the owner's socket (the directory lets others reach a
/// socket whose name they know, never list it). A socket moved with
/// `--ctl-socket` is not found this way: pass it with `--socket`.
pub(crate) fn socket_for_mount(m: &Path, code: u8) -> Result<PathBuf, CliError> {
    let canon = m
        .canonicalize()
        .map_err(|e| CliError::new(code, format!("{}: {e}", m.display())))?;
    let mine = ctl::default_socket_path(&canon);
    let Some(top) = sealfs::daemon::mounts::top_at(&canon) else {
        // Not a mount-point problem: nothing serves there (exit 1 for ctl,
        // fsck's own code for fsck).
        let code = if code == exit::FSCK_FAILED {
            code
        } else {
            exit::ERROR
        };
        return Err(CliError::new(
            code,
            format!(
                "nothing is mounted on {}, so there is no control socket to reach (is the volume mounted?)",
                m.display()
            ),
        ));
    };
    if !top.is_sealfs() {
        return Err(CliError::new(
            code,
            format!(
                "{} is a {} mount, not a sealfs one",
                m.display(),
                top.fstype
            ),
        ));
    }
    let owner = top
        .options
        .split(',')
        .find_map(|o| o.strip_prefix("user_id=")?.parse::<u32>().ok());
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    let (Some(owner), Some(name)) = (owner.filter(|&o| o != me), mine.file_name()) else {
        return Ok(mine);
    };
    let dirs: Vec<PathBuf> = if owner == 0 {
        vec!["/run/sealfs".into()]
    } else {
        vec![
            format!("/run/user/{owner}/sealfs").into(),
            format!("/tmp/sealfs-{owner}").into(),
        ]
    };
    // The owner's directories first; then the caller's own default (a
    // socket placed there by someone else is refused by the server check).
    let mut candidates: Vec<PathBuf> = dirs.iter().map(|d| d.join(name)).collect();
    candidates.push(mine.clone());
    Ok(candidates
        .iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .unwrap_or(&candidates[0])
        .clone())
}

/// The socket `--socket` names, or the default one of the mount `--mount` names.
fn socket_of(a: &CtlArgs) -> Result<Target, CliError> {
    let mut t = match (&a.socket, &a.mount) {
        (Some(s), _) => Target::of_socket(s.clone(), exit::ERROR),
        (None, Some(m)) => Target::of_mount(m, exit::MOUNTPOINT),
        (None, None) => Err(CliError::new(
            exit::ERROR,
            "give --mount MOUNTPOINT or --socket PATH",
        )),
    }?;
    t.key = a.key.clone();
    Ok(t)
}

/// Prints `v` as JSON with `--json`, else its summary.
pub(crate) fn show<T: serde::Serialize>(
    json: bool,
    v: &T,
    human: impl FnOnce(&T),
) -> Result<(), CliError> {
    if json {
        print_json(v)
    } else {
        human(v);
        Ok(())
    }
}

pub(crate) fn print_schedule(rotation_period: &Option<String>, next_rotation: Option<u64>) {
    match rotation_period {
        Some(p) => println!(
            "rotation every {p}, next due {}",
            fmt_time(next_rotation.unwrap_or(0))
        ),
        None => println!("automatic rotation off"),
    }
}

/// `n thing`/`n things`.
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The census as a table: one row per key version.
fn print_census(c: &CensusResult) {
    let versions: std::collections::BTreeSet<u32> = c
        .files
        .keys()
        .chain(c.dirs.keys())
        .chain(c.unreadable_by_version.keys())
        .copied()
        .collect();
    println!(
        "{:>7}  {:>10}  {:>10}  {:>10}",
        "version", "files", "dirs", "unreadable"
    );
    for v in &versions {
        let get = |m: &std::collections::BTreeMap<u32, u64>| m.get(v).copied().unwrap_or(0);
        println!(
            "{:>7}  {:>10}  {:>10}  {:>10}",
            format!("v{v}"),
            get(&c.files),
            get(&c.dirs),
            get(&c.unreadable_by_version)
        );
    }
    println!(
        "{:>7}  {:>10}  {:>10}  {:>10}",
        "total",
        c.files.values().sum::<u64>(),
        c.dirs.values().sum::<u64>(),
        c.unreadable
    );
}

fn print_status(s: &StatusResult) {
    println!(
        "volume {} at {}{}",
        s.volume_id,
        s.mountpoint.display(),
        if s.disabled { " — KEY DISABLED" } else { "" }
    );
    println!("primary key version {}", s.primary);
    for k in &s.versions {
        let counts = match (k.files, k.dirs) {
            (Some(f), Some(d)) => format!(" files {f} dirs {d}"),
            _ => String::new(),
        };
        let due = k
            .deletion_due
            .map(|d| format!(", destroyed at {}", fmt_time(d)))
            .unwrap_or_default();
        println!(
            "  v{} {:<17} created {}{}{}",
            k.version,
            k.state.as_str(),
            fmt_time(k.created),
            counts,
            due
        );
    }
    print_schedule(&s.rotation_period, s.next_rotation);
    if s.keys.len() > 1 {
        for k in &s.keys {
            println!(
                "key {} {} {}, primary v{}{}",
                k.id,
                k.aliases.join(","),
                k.state,
                k.primary,
                if k.default { " [default]" } else { "" }
            );
        }
    }
    if s.rewrap.running {
        println!("rewrap running: {}/{}", s.rewrap.done, s.rewrap.total);
    }
    if let Some(a) = &s.audit {
        let retention = match &a.retention {
            None => "keeps every record".to_string(),
            Some(r) => format!(
                "retention: max age {}, max size {}",
                r.max_age.as_deref().unwrap_or("none"),
                r.max_bytes
                    .map_or("none".to_string(), |b| format!("{} MiB", b >> 20))
            ),
        };
        let pruned = a
            .pruned_through
            .map_or(String::new(), |p| format!(", pruned through record {p}"));
        let stream = a
            .host
            .as_deref()
            .map_or(String::new(), |h| format!(" (host {h}'s stream)"));
        println!(
            "audit log{stream}: {} record(s), {} segment(s), {} KiB on disk{pruned}; headroom {} MiB; {retention}",
            a.records,
            a.segments,
            a.bytes >> 10,
            a.headroom >> 20
        );
    }
    if let Some(sp) = &s.space {
        println!(
            "free in CIPHERDIR {} MiB, ENOSPC margin {} MiB{}",
            sp.free >> 20,
            sp.margin >> 20,
            if sp.write_through {
                " — new opens write-through"
            } else {
                ""
            }
        );
    }
}

/// JSON text of `v` (as the daemon wrote it), for summaries that quote it.
fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).map_or_else(|_| "?".into(), |v| v.to_string())
}

pub(crate) fn cmd_ctl(a: &CtlArgs) -> Result<(), CliError> {
    let socket = socket_of(a)?;
    let json = a.json;
    match &a.cmd {
        CtlCommand::Status => {
            let s: StatusResult = ctl_call(&socket, Op::Status)?;
            show(json, &s, print_status)
        }
        CtlCommand::Rotate => {
            let r: RotateResult = ctl_call(&socket, Op::Rotate)?;
            show(json, &r, |r| {
                println!("key version {} is now primary", r.primary)
            })
        }
        CtlCommand::Rewrap { background, path } => {
            let op = match path {
                Some(p) => Op::RewrapPath { path: p.clone() },
                None => Op::Rewrap,
            };
            let started: RewrapStarted = ctl_call(&socket, op)?;
            if *background {
                return show(json, &started, |_| println!("rewrap started"));
            }
            let bar = progress_bar_for(BarKind::Headers);
            let last = loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let s: StatusResult = ctl_call(&socket, Op::Status)?;
                let r = s.rewrap;
                crate::progress::update(&bar, r.done, r.total);
                if !r.running {
                    break r;
                }
            };
            bar.finish_and_clear();
            show(json, &last, |r| {
                println!(
                    "rewrap done: {} visited, {} re-wrapped, {} failed",
                    r.done, r.rewrapped, r.failed
                )
            })?;
            if last.failed > 0 {
                return Err(CliError::new(
                    exit::ERROR,
                    "some headers could not be re-wrapped (see the daemon log)",
                ));
            }
            Ok(())
        }
        CtlCommand::Metrics => {
            let m: MetricsResult = ctl_call(&socket, Op::Metrics)?;
            if json {
                // One object: series (name and labels, as in the text) → value.
                let series: serde_json::Map<String, serde_json::Value> = m
                    .text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .filter_map(|l| {
                        let (k, v) = l.rsplit_once(' ')?;
                        let n = match v.parse::<u64>() {
                            Ok(i) => serde_json::json!(i),
                            Err(_) => serde_json::json!(v.parse::<f64>().ok()?),
                        };
                        Some((k.to_string(), n))
                    })
                    .collect();
                return print_json(&series);
            }
            print!("{}", m.text);
            Ok(())
        }
        CtlCommand::Census { by_key } => {
            let c: CensusResult = ctl_call(&socket, Op::Census)?;
            if *by_key {
                return crate::keys::census_by_key(&socket, json, &c);
            }
            show(json, &c, print_census)
        }
        CtlCommand::Disable if socket.key.is_some() => {
            let k: KeyChanged = ctl_call(&socket, Op::Disable)?;
            show(json, &k, |k| {
                println!(
                    "key {} disabled: the files and directories it wraps now fail with EACCES",
                    k.id
                )
            })
        }
        CtlCommand::Enable if socket.key.is_some() => {
            let k: KeyChanged = ctl_call(&socket, Op::Enable)?;
            show(json, &k, |k| println!("key {} enabled", k.id))
        }
        CtlCommand::Disable => {
            let d: DisabledResult = ctl_call(&socket, Op::Disable)?;
            show(json, &d, |_| {
                println!("key disabled: file I/O now fails with EACCES")
            })
        }
        CtlCommand::Enable => {
            let d: DisabledResult = ctl_call(&socket, Op::Enable)?;
            show(json, &d, |_| println!("key enabled"))
        }
        CtlCommand::Key(k) => crate::keys::cmd_key(&socket, json, k),
        CtlCommand::RotationPeriod {
            period,
            allow_short,
        } => {
            let period = match period {
                Period::Off => None,
                Period::Every(d) => Some(crate::duration::wire(
                    crate::duration::rotation_period(*d, *allow_short)
                        .map_err(|e| CliError::new(exit::ERROR, e))?,
                )),
            };
            let r: RotationPeriodResult = ctl_call(
                &socket,
                Op::SetRotationPeriod {
                    period,
                    allow_short: *allow_short,
                },
            )?;
            show(json, &r, |r| {
                print_schedule(&r.rotation_period, r.next_rotation)
            })
        }
        CtlCommand::Trim { min_version, force } => {
            let t: TrimResult = ctl_call(
                &socket,
                Op::Trim {
                    min_version: *min_version,
                    force: *force,
                },
            )?;
            show(json, &t, |t| {
                println!("retired versions {}", json_text(&t.retired));
                if t.headers_left_unreadable > 0 {
                    println!(
                        "{} headers stay unreadable until `untrim`",
                        t.headers_left_unreadable
                    );
                }
            })
        }
        CtlCommand::Untrim { version } => {
            let u: UntrimResult = ctl_call(&socket, Op::Untrim { version: *version })?;
            show(json, &u, |_| println!("version {version} enabled again"))
        }
        CtlCommand::ScheduleDeletion { version, wait, yes } => {
            let Some(version) = version.or(socket.key.as_ref().map(|_| 0)) else {
                return Err(CliError::new(
                    exit::ERROR,
                    "give a VERSION, or --key KEY to delete a whole key",
                ));
            };
            let what = match (version, &socket.key) {
                (0, Some(k)) => format!("key {k}"),
                _ => format!("version {version}"),
            };
            let version = &version;
            let request = |confirm| Op::ScheduleDeletion {
                version: *version,
                wait: Some(crate::duration::wire(*wait)),
                confirm,
            };
            let dry: ScheduleDeletionResult = ctl_call(&socket, request(false))?;
            let orphans = dry.would_orphan;
            // Nothing to lose (no header uses the version): no question.
            if !yes && orphans > 0 {
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    return Err(CliError::new(
                        exit::ERROR,
                        format!(
                            "destroying {what} would make {} unreadable; pass --yes to confirm",
                            plural(orphans, "header", "headers")
                        ),
                    ));
                }
                eprint!("Destroying {what} after {} makes {orphans} files/dirs unreadable for good. Type 'destroy' to confirm: ", humantime::format_duration(*wait));
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
                if answer.trim() != "destroy" {
                    return Err(CliError::new(exit::ERROR, "not confirmed; nothing changed"));
                }
            }
            let done: ScheduleDeletionResult = ctl_call(&socket, request(true))?;
            show(json, &done, |d| {
                println!(
                    "{what} will be destroyed at {} ({} still {} it)",
                    fmt_time(d.deletion_due.unwrap_or(0)),
                    plural(d.would_orphan, "header", "headers"),
                    if d.would_orphan == 1 { "uses" } else { "use" }
                )
            })
        }
        CtlCommand::Grant(g) => crate::grants::cmd_grant(&socket, json, g),
        CtlCommand::Audit(c) => crate::audit::cmd_audit_ctl(&socket, json, c),
        CtlCommand::CancelDeletion { version: None } if socket.key.is_some() => {
            let k: KeyChanged = ctl_call(&socket, Op::CancelDeletion { version: 0 })?;
            show(json, &k, |k| {
                println!("deletion of key {} cancelled; it stays disabled", k.id)
            })
        }
        CtlCommand::CancelDeletion { version } => {
            let Some(version) = version else {
                return Err(CliError::new(
                    exit::ERROR,
                    "give a VERSION, or --key KEY to cancel a whole key's deletion",
                ));
            };
            let c: CancelDeletionResult =
                ctl_call(&socket, Op::CancelDeletion { version: *version })?;
            show(json, &c, |_| {
                println!("deletion of version {version} cancelled; it stays retired")
            })
        }
    }
}
