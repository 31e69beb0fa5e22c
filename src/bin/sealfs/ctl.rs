//! `sealfs ctl …`: key management of a mounted volume through its control
//! socket; prints a summary of each response (or, with `--json`, the result).

use std::path::Path;

use sealfs::ctl;

use crate::args::{CtlArgs, CtlCommand};
use crate::error::{exit, CliError};
use crate::progress::{progress_bar_for, BarKind};

pub(crate) fn ctl_call(
    socket: &Path,
    op: serde_json::Value,
) -> Result<serde_json::Value, CliError> {
    match ctl::client::call(socket, op) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CliError::new(
            exit::ERROR,
            format!("{} ({})", e.message, e.code),
        )),
        Err(e) => Err(CliError::new(
            exit::ERROR,
            format!(
                "cannot reach the control socket {}: {e} (is the volume mounted?)",
                socket.display()
            ),
        )),
    }
}

fn fmt_time(secs: u64) -> String {
    format!("{secs} (unix time)")
}

pub(crate) fn cmd_ctl(a: &CtlArgs) -> Result<(), CliError> {
    use serde_json::json;
    let socket = match (&a.socket, &a.mount) {
        (Some(s), _) => s.clone(),
        (None, Some(m)) => ctl::default_socket_path(
            &m.canonicalize()
                .map_err(|e| CliError::new(exit::MOUNTPOINT, format!("{}: {e}", m.display())))?,
        ),
        (None, None) => {
            return Err(CliError::new(
                exit::ERROR,
                "give --mount MOUNTPOINT or --socket PATH",
            ))
        }
    };
    let print = |v: &serde_json::Value, human: &dyn Fn(&serde_json::Value)| {
        if a.json {
            println!("{v}");
        } else {
            human(v);
        }
    };
    match &a.cmd {
        CtlCommand::Status => {
            let v = ctl_call(&socket, json!({"op": "status"}))?;
            print(&v, &|v| {
                println!(
                    "volume {} at {}{}",
                    v["volume_id"].as_str().unwrap_or("?"),
                    v["mountpoint"].as_str().unwrap_or("?"),
                    if v["disabled"] == true {
                        " — KEY DISABLED"
                    } else {
                        ""
                    }
                );
                println!("primary key version {}", v["primary"]);
                for k in v["versions"].as_array().into_iter().flatten() {
                    let counts = if k.get("files").is_some() {
                        format!(" files {} dirs {}", k["files"], k["dirs"])
                    } else {
                        String::new()
                    };
                    println!(
                        "  v{:<4} {:<17} created {}{}",
                        k["version"],
                        k["state"].as_str().unwrap_or(""),
                        fmt_time(k["created"].as_u64().unwrap_or(0)),
                        counts
                    );
                }
                match v["rotation_period"].as_str() {
                    Some(p) => println!(
                        "rotation every {p}, next due {}",
                        fmt_time(v["next_rotation"].as_u64().unwrap_or(0))
                    ),
                    None => println!("automatic rotation off"),
                }
                let r = &v["rewrap"];
                if r["running"] == true {
                    println!("rewrap running: {}/{}", r["done"], r["total"]);
                }
            });
        }
        CtlCommand::Rotate => {
            let v = ctl_call(&socket, json!({"op": "rotate"}))?;
            print(&v, &|v| {
                println!("key version {} is now primary", v["primary"])
            });
        }
        CtlCommand::Rewrap { background } => {
            let v = ctl_call(&socket, json!({"op": "rewrap"}))?;
            if *background {
                print(&v, &|_| println!("rewrap started"));
                return Ok(());
            }
            let bar = progress_bar_for(BarKind::Headers);
            let last = loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let s = ctl_call(&socket, json!({"op": "status"}))?;
                let r = s["rewrap"].clone();
                bar.set_length(r["total"].as_u64().unwrap_or(0).max(1));
                bar.set_position(r["done"].as_u64().unwrap_or(0));
                if r["running"] != true {
                    break r;
                }
            };
            bar.finish_and_clear();
            print(&last, &|r| {
                println!(
                    "rewrap done: {} visited, {} re-wrapped, {} failed",
                    r["done"], r["rewrapped"], r["failed"]
                )
            });
            if last["failed"].as_u64().unwrap_or(0) > 0 {
                return Err(CliError::new(
                    exit::ERROR,
                    "some headers could not be re-wrapped (see the daemon log)",
                ));
            }
        }
        CtlCommand::Metrics => {
            let v = ctl_call(&socket, json!({"op": "metrics"}))?;
            print(&v, &|v| print!("{}", v["text"].as_str().unwrap_or("")));
        }
        CtlCommand::Census => {
            let v = ctl_call(&socket, json!({"op": "census"}))?;
            print(&v, &|v| {
                println!(
                    "files per version {}, dirs per version {}, unreadable {}",
                    v["files"], v["dirs"], v["unreadable"]
                )
            });
        }
        CtlCommand::Disable => {
            let v = ctl_call(&socket, json!({"op": "disable"}))?;
            print(&v, &|_| {
                println!("key disabled: file I/O now fails with EACCES")
            });
        }
        CtlCommand::Enable => {
            let v = ctl_call(&socket, json!({"op": "enable"}))?;
            print(&v, &|_| println!("key enabled"));
        }
        CtlCommand::RotationPeriod { period } => {
            let p = if period == "off" {
                serde_json::Value::Null
            } else {
                json!(period)
            };
            let v = ctl_call(&socket, json!({"op": "set_rotation_period", "period": p}))?;
            print(&v, &|v| match v["rotation_period"].as_str() {
                Some(p) => println!(
                    "rotation every {p}, next due {}",
                    fmt_time(v["next_rotation"].as_u64().unwrap_or(0))
                ),
                None => println!("automatic rotation off"),
            });
        }
        CtlCommand::Trim { min_version, force } => {
            let v = ctl_call(
                &socket,
                json!({"op": "trim", "min_version": min_version, "force": force}),
            )?;
            print(&v, &|v| {
                println!("retired versions {}", v["retired"]);
                let left = v["headers_left_unreadable"].as_u64().unwrap_or(0);
                if left > 0 {
                    println!("{left} headers stay unreadable until `untrim`");
                }
            });
        }
        CtlCommand::Untrim { version } => {
            let v = ctl_call(&socket, json!({"op": "untrim", "version": version}))?;
            print(&v, &|_| println!("version {version} enabled again"));
        }
        CtlCommand::ScheduleDeletion { version, wait, yes } => {
            let dry = ctl_call(
                &socket,
                json!({"op": "schedule_deletion", "version": version, "wait": wait, "confirm": false}),
            )?;
            let orphans = dry["would_orphan"].as_u64().unwrap_or(0);
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
            let v = ctl_call(
                &socket,
                json!({"op": "schedule_deletion", "version": version, "wait": wait, "confirm": true}),
            )?;
            print(&v, &|v| {
                println!(
                    "version {version} will be destroyed at {} ({} headers still use it)",
                    fmt_time(v["deletion_due"].as_u64().unwrap_or(0)),
                    v["would_orphan"]
                )
            });
        }
        CtlCommand::Grant(g) => return crate::grants::cmd_grant(&socket, a.json, g),
        CtlCommand::Audit(c) => return crate::audit::cmd_audit_ctl(&socket, a.json, c),
        CtlCommand::CancelDeletion { version } => {
            let v = ctl_call(
                &socket,
                json!({"op": "cancel_deletion", "version": version}),
            )?;
            print(&v, &|_| {
                println!("deletion of version {version} cancelled; it stays retired")
            });
        }
    }
    Ok(())
}
