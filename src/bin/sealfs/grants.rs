//! `sealfs ctl grant …`: grants to other local users, through the control
//! socket (the daemon checks and stores them).
//!
//! Owns: the grant commands' output.
//! Must never: check or store a grant (the daemon does).

use std::path::Path;

use sealfs::ctl::protocol::{
    GrantCreated, GrantList, GrantRetired, GrantRevoked, GrantToken, Op, StatusResult,
};

use crate::args::GrantCommand;
use crate::ctl::{ctl_call, Target};
use crate::error::{exit, CliError};
use crate::print_json;

/// A grantee as the daemon takes it (`uid:N`, `gid:N`) from what a user
/// writes: `uid:N`, `gid:N`, a user name (`alice`, `user:alice`) or a
/// group name (`group:staff`), looked up in the passwd/group databases.
pub(crate) fn resolve_grantee(g: &str) -> Result<String, CliError> {
    if g.starts_with("uid:") || g.starts_with("gid:") {
        return Ok(g.to_string());
    }
    let unknown = |what: &str, name: &str| {
        CliError::new(
            exit::ERROR,
            format!("no {what} named '{name}' (grantees: a user name, group:NAME, uid:N or gid:N)"),
        )
    };
    if let Some(name) = g.strip_prefix("group:") {
        let c = std::ffi::CString::new(name).map_err(|_| unknown("group", name))?;
        // SAFETY: getgrnam with a valid C string; the CLI is single-threaded
        // here and copies the gid out at once.
        let gr = unsafe { libc::getgrnam(c.as_ptr()) };
        if gr.is_null() {
            return Err(unknown("group", name));
        }
        // SAFETY: non-null result of getgrnam.
        return Ok(format!("gid:{}", unsafe { (*gr).gr_gid }));
    }
    let name = g.strip_prefix("user:").unwrap_or(g);
    let c = std::ffi::CString::new(name).map_err(|_| unknown("user", name))?;
    // SAFETY: as above, getpwnam.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(unknown("user", name));
    }
    // SAFETY: non-null result of getpwnam.
    Ok(format!("uid:{}", unsafe { (*pw).pw_uid }))
}

/// Warns when `prefix` looks like a host path (under the mount point, or
/// naming nothing inside the volume): grants take paths inside the volume.
fn warn_host_path(socket: &Target, prefix: &str) {
    let Ok(st) = ctl_call::<StatusResult>(socket, Op::Status) else {
        return;
    };
    let mp = &st.mountpoint;
    let p = Path::new(prefix);
    if let Ok(inside) = p.strip_prefix(mp) {
        eprintln!(
            "sealfs: warning: --path-prefix {prefix} is a path on the host (under the mount \
             point {}); grants take paths inside the volume: did you mean /{}?",
            mp.display(),
            inside.display()
        );
    } else if !mp.join(prefix.trim_start_matches('/')).exists() {
        eprintln!(
            "sealfs: warning: --path-prefix {prefix} names nothing inside the volume (yet); \
             grants take paths inside the volume, as seen under {}",
            mp.display()
        );
    }
}

pub(crate) fn cmd_grant(
    socket: &Target,
    json_out: bool,
    cmd: &GrantCommand,
) -> Result<(), CliError> {
    match cmd {
        GrantCommand::Create {
            grantee,
            ops,
            path_prefix,
            expires,
            name,
        } => {
            let grantee = resolve_grantee(grantee)?;
            warn_host_path(socket, path_prefix);
            let g: GrantCreated = ctl_call(
                socket,
                Op::GrantCreate {
                    grantee,
                    ops: ops.clone(),
                    path_prefix: path_prefix.clone(),
                    expires: expires.clone(),
                    name: name.clone(),
                },
            )?;
            if json_out {
                return print_json(&g);
            }
            println!("grant {}", g.grant.grant_id);
            println!("token {}", g.grant_token);
            eprintln!("(the token is shown once; the grantee retires the grant with it: sealfs ctl --socket SOCKET grant retire TOKEN)");
            Ok(())
        }
        GrantCommand::List {
            grantee,
            path_prefix,
        } => {
            let list: GrantList = ctl_call(
                socket,
                Op::GrantList {
                    grantee: grantee.as_deref().map(resolve_grantee).transpose()?,
                    path_prefix: path_prefix.clone(),
                },
            )?;
            if json_out {
                return print_json(&list);
            }
            if list.grants.is_empty() {
                println!("no live grants");
            }
            for g in &list.grants {
                println!(
                    "{}  {}  {}  {}  key {}  expires {}{}",
                    g.grant_id,
                    g.grantee,
                    g.ops.join(","),
                    g.path_prefix,
                    g.key.map_or("default".to_string(), |k| k.to_string()),
                    g.expires.as_deref().unwrap_or("never"),
                    g.name
                        .as_deref()
                        .map(|n| format!("  ({n})"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        GrantCommand::Retire { token } => {
            let token = if token == "-" {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| {
                    CliError::new(exit::ERROR, format!("cannot read the token: {e}"))
                })?;
                line.trim().to_string()
            } else {
                token.clone()
            };
            let r: GrantRetired = ctl_call(
                socket,
                Op::GrantRetire {
                    token: GrantToken(token),
                },
            )?;
            if json_out {
                return print_json(&r);
            }
            println!("grant {} retired", r.retired);
            Ok(())
        }
        GrantCommand::Revoke { grant_id } => {
            let r: GrantRevoked = ctl_call(
                socket,
                Op::GrantRevoke {
                    grant_id: grant_id.clone(),
                },
            )?;
            if json_out {
                return print_json(&r);
            }
            println!(
                "grant {} revoked; open handles through it now fail",
                r.revoked
            );
            Ok(())
        }
    }
}
