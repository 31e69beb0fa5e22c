//! `sealfs ctl grant …`: grants to other local users, through the control
//! socket (the daemon checks and stores them).
//!
//! Owns: the grant commands' output.
//! Must never: check or store a grant (the daemon does).

use sealfs::ctl::protocol::{GrantCreated, GrantList, GrantRetired, GrantRevoked, GrantToken, Op};

use crate::args::GrantCommand;
use crate::ctl::{ctl_call, Target};
use crate::error::{exit, CliError};
use crate::print_json;

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
            let g: GrantCreated = ctl_call(
                socket,
                Op::GrantCreate {
                    grantee: grantee.clone(),
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
                    grantee: grantee.clone(),
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
                    "{}  {}  {}  {}  expires {}{}",
                    g.grant_id,
                    g.grantee,
                    g.ops.join(","),
                    g.path_prefix,
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
