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
    CancelDeletionResult, CensusResult, DisabledResult, MetricsResult, Op, Request, RewrapStarted,
    RotateResult, RotationPeriodResult, ScheduleDeletionResult, StatusResult, TrimResult,
    UntrimResult,
};

use crate::args::{CtlArgs, CtlCommand};
use crate::error::{exit, CliError};
use crate::print_json;
use crate::progress::{progress_bar_for, BarKind};

/// A control socket and who may serve it (root or the mount owner).
pub(crate) struct Target {
    /// The socket's path.
    pub(crate) socket: PathBuf,
    /// The check of the server's `SO_PEERCRED`.
    pub(crate) check: ServerCheck,
}

impl Target {
    /// The socket of the mount at `mountpoint` (its default path); the
    /// server must be root or the user who mounted it.
    pub(crate) fn of_mount(mountpoint: &Path, code: u8) -> Result<Target, CliError> {
        let mp = mountpoint
            .canonicalize()
            .map_err(|e| CliError::new(code, format!("{}: {e}", mountpoint.display())))?;
        let socket = ctl::default_socket_path(&mp);
        let check = ServerCheck::for_mount(&mp, &socket).map_err(|e| {
            CliError::new(
                code,
                format!(
                    "cannot reach the control socket {}: {e} (is the volume mounted?)",
                    socket.display()
                ),
            )
        })?;
        Ok(Target { socket, check })
    }

    /// The socket at `socket` (`--socket`).
    pub(crate) fn of_socket(socket: PathBuf, code: u8) -> Result<Target, CliError> {
        let check = ServerCheck::for_socket(&socket).map_err(|e| {
            CliError::new(
                code,
                format!("cannot use the control socket {}: {e}", socket.display()),
            )
        })?;
        Ok(Target { socket, check })
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
    ctl::client::call_checked(&t.socket, &Request::new(op), &t.check)
        .map_err(|e| call_error(&t.socket, e))
}

fn fmt_time(secs: u64) -> String {
    format!("{secs} (unix time)")
}

/// The socket `--socket` names, or the default one of the mount `--mount` names.
fn socket_of(a: &CtlArgs) -> Result<Target, CliError> {
    match (&a.socket, &a.mount) {
        (Some(s), _) => Target::of_socket(s.clone(), exit::ERROR),
        (None, Some(m)) => Target::of_mount(m, exit::MOUNTPOINT),
        (None, None) => Err(CliError::new(
            exit::ERROR,
            "give --mount MOUNTPOINT or --socket PATH",
        )),
    }
}

/// Prints `v` as JSON with `--json`, else its summary.
fn show<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) -> Result<(), CliError> {
    if json {
        print_json(v)
    } else {
        human(v);
        Ok(())
    }
}

fn print_schedule(rotation_period: &Option<String>, next_rotation: Option<u64>) {
    match rotation_period {
        Some(p) => println!(
            "rotation every {p}, next due {}",
            fmt_time(next_rotation.unwrap_or(0))
        ),
        None => println!("automatic rotation off"),
    }
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
        println!(
            "  v{} {:<17} created {}{}",
            k.version,
            k.state.as_str(),
            fmt_time(k.created),
            counts
        );
    }
    print_schedule(&s.rotation_period, s.next_rotation);
    if s.rewrap.running {
        println!("rewrap running: {}/{}", s.rewrap.done, s.rewrap.total);
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
        CtlCommand::Rewrap { background } => {
            let started: RewrapStarted = ctl_call(&socket, Op::Rewrap)?;
            if *background {
                return show(json, &started, |_| println!("rewrap started"));
            }
            let bar = progress_bar_for(BarKind::Headers);
            let last = loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let s: StatusResult = ctl_call(&socket, Op::Status)?;
                let r = s.rewrap;
                bar.set_length(r.total.max(1));
                bar.set_position(r.done);
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
            show(json, &m, |m| print!("{}", m.text))
        }
        CtlCommand::Census => {
            let c: CensusResult = ctl_call(&socket, Op::Census)?;
            show(json, &c, |c| {
                println!(
                    "files per version {}, dirs per version {}, unreadable {}",
                    json_text(&c.files),
                    json_text(&c.dirs),
                    c.unreadable
                )
            })
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
        CtlCommand::RotationPeriod { period } => {
            let period = (period != "off").then(|| period.clone());
            let r: RotationPeriodResult = ctl_call(&socket, Op::SetRotationPeriod { period })?;
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
            let request = |confirm| Op::ScheduleDeletion {
                version: *version,
                wait: Some(wait.clone()),
                confirm,
            };
            let dry: ScheduleDeletionResult = ctl_call(&socket, request(false))?;
            let orphans = dry.would_orphan;
            if !yes {
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    return Err(CliError::new(exit::ERROR, format!("destroying version {version} would make {orphans} headers unreadable; pass --yes to confirm")));
                }
                eprint!("Destroying key version {version} after {wait} makes {orphans} files/dirs unreadable for good. Type 'destroy' to confirm: ");
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
                    "version {version} will be destroyed at {} ({} headers still use it)",
                    fmt_time(d.deletion_due.unwrap_or(0)),
                    d.would_orphan
                )
            })
        }
        CtlCommand::Grant(g) => crate::grants::cmd_grant(&socket, json, g),
        CtlCommand::Audit(c) => crate::audit::cmd_audit_ctl(&socket, json, c),
        CtlCommand::CancelDeletion { version } => {
            let c: CancelDeletionResult =
                ctl_call(&socket, Op::CancelDeletion { version: *version })?;
            show(json, &c, |_| {
                println!("deletion of version {version} cancelled; it stays retired")
            })
        }
    }
}
