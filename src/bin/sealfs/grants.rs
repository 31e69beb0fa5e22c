//! `sealfs ctl grant …`: grants to other local users, through the control
//! socket (the daemon checks and stores them).

use std::path::Path;

use serde_json::json;

use crate::args::GrantCommand;
use crate::ctl::ctl_call;
use crate::error::{exit, CliError};

pub(crate) fn cmd_grant(socket: &Path, json_out: bool, cmd: &GrantCommand) -> Result<(), CliError> {
    let v = match cmd {
        GrantCommand::Create {
            grantee,
            ops,
            path_prefix,
            expires,
            name,
        } => {
            let v = ctl_call(
                socket,
                json!({"op": "grant_create", "grantee": grantee, "ops": ops,
                       "path_prefix": path_prefix, "expires": expires, "name": name}),
            )?;
            if !json_out {
                println!("grant {}", v["grant_id"].as_str().unwrap_or("?"));
                println!("token {}", v["grant_token"].as_str().unwrap_or("?"));
                eprintln!("(the token is shown once; the grantee retires the grant with it: sealfs ctl --socket SOCKET grant retire TOKEN)");
                return Ok(());
            }
            v
        }
        GrantCommand::List {
            grantee,
            path_prefix,
        } => {
            let v = ctl_call(
                socket,
                json!({"op": "grant_list", "grantee": grantee, "path_prefix": path_prefix}),
            )?;
            if !json_out {
                let empty = Vec::new();
                let list = v["grants"].as_array().unwrap_or(&empty);
                if list.is_empty() {
                    println!("no live grants");
                }
                for g in list {
                    println!(
                        "{}  {}  {}  {}  expires {}{}",
                        g["grant_id"].as_str().unwrap_or("?"),
                        g["grantee"].as_str().unwrap_or("?"),
                        g["ops"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default(),
                        g["path_prefix"].as_str().unwrap_or("?"),
                        g["expires"].as_str().unwrap_or("never"),
                        g["name"]
                            .as_str()
                            .map(|n| format!("  ({n})"))
                            .unwrap_or_default()
                    );
                }
                return Ok(());
            }
            v
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
            ctl_call(socket, json!({"op": "grant_retire", "token": token}))?
        }
        GrantCommand::Revoke { grant_id } => {
            ctl_call(socket, json!({"op": "grant_revoke", "grant_id": grant_id}))?
        }
    };
    if json_out {
        println!("{v}");
    } else if let Some(id) = v["retired"].as_str() {
        println!("grant {id} retired");
    } else if let Some(id) = v["revoked"].as_str() {
        println!("grant {id} revoked; open handles through it now fail");
    }
    Ok(())
}
