//! `sealfs ctl grant …`, `sealfs ctl audit …` and the offline `sealfs audit
//! …` commands: argument parsing and output only; the daemon and
//! [`sealfs::policy::audit`] do the work.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use serde_json::{json, Value};

use sealfs::ctl::{self, record_json, AuditFilter};
use sealfs::policy::audit::verify_log;
use sealfs::volume::Volume;

use super::{check_is_volume, ctl_call, exit, read_secret, CliError, SecretArgs};

#[derive(Subcommand)]
pub(crate) enum GrantCommand {
    /// Give a local user or group access to a path prefix; prints the grant id and token.
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault grant create --grantee uid:1001 --ops read,list --path-prefix /projects/x\n  sealfs ctl --mount ~/vault grant create --grantee gid:100 --ops all --path-prefix /shared --expires 2026-12-31T00:00Z --name team\n  sealfs ctl --mount ~/vault grant create --grantee uid:1001 --ops read --path-prefix /tmp-share --expires 2h\n\nOperations: read (open for reading, readlink), write (open for writing, truncate,\nchmod, utimes), list (readdir), create (files, dirs, symlinks), delete, rename (both\nends inside the prefix), all. Any grant lets its grantee look up names inside its\nprefix and the directories leading to it. The mount needs -o allow_other for other\nusers to reach it at all."
    )]
    Create {
        /// `uid:N` or `gid:N`.
        #[arg(long)]
        grantee: String,
        /// Comma-separated operations.
        #[arg(long, value_delimiter = ',', required = true)]
        ops: Vec<String>,
        /// Canonical path inside the mount (`/` for everything).
        #[arg(long)]
        path_prefix: String,
        /// Expiry: UTC time (2026-12-31T00:00Z), date, or duration from now (12h, 7d).
        #[arg(long)]
        expires: Option<String>,
        /// A label shown in listings.
        #[arg(long)]
        name: Option<String>,
    },
    /// List live grants.
    List {
        /// Only this grantee (`uid:N` / `gid:N`).
        #[arg(long)]
        grantee: Option<String>,
        /// Only grants whose prefix contains or lies under this path.
        #[arg(long)]
        path_prefix: Option<String>,
    },
    /// End a grant with its token (the grantee may run this on their own).
    #[command(
        after_help = "Examples:\n  sealfs ctl --socket /run/sealfs/mnt-HASH.sock grant retire - < token.txt   # token not in ps or shell history\n  sealfs ctl --mount ~/vault grant retire sgt_9ef1…"
    )]
    Retire {
        /// The grant token printed at creation, or `-` to read it from stdin.
        token: String,
    },
    /// End a grant by id (mount owner).
    Revoke {
        /// The grant id (g-…).
        grant_id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCtlCommand {
    /// Stream audit records as JSON lines (filters combine).
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault audit export --since 1h\n  sealfs ctl --mount ~/vault audit export --principal uid:1001 --op decrypt\n  sealfs ctl --mount ~/vault audit export --path-prefix /projects/x --since 2026-11-01 --until 2026-12-01"
    )]
    Export(ExportFilter),
    /// Verify the audit chain of the mounted volume.
    Verify,
}

#[derive(clap::Args)]
pub(crate) struct ExportFilter {
    /// Records at or after this time (UTC time, date, or a duration ago like 1h).
    #[arg(long)]
    since: Option<String>,
    /// Records before this time.
    #[arg(long)]
    until: Option<String>,
    /// Only this principal: uid:N, gid:N or pid:N.
    #[arg(long)]
    principal: Option<String>,
    /// Only records whose path lies under this prefix.
    #[arg(long)]
    path_prefix: Option<String>,
    /// Only this operation (decrypt, encrypt, generate_data_key, re_encrypt, list,
    /// lookup, rotate, grant_created, …).
    #[arg(long)]
    op: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the audit log's chain offline (needs the volume's secret).
    #[command(
        after_help = "Examples:\n  sealfs audit verify ~/vault.enc --passfile ~/.vault-pass\n  sealfs audit verify ~/vault.enc --passfile ~/.vault-pass --json\n\nExit codes: 0 the chain verifies, 3 a record is missing, edited or out of order\n(the first bad record is reported), 12 wrong secret, 23 not a volume, 1 other errors.\nAn incomplete last record (a crash while appending) is reported but is not a break."
    )]
    Verify {
        /// The volume's cipher directory (may be mounted).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export verified audit records as JSON lines, offline.
    #[command(
        after_help = "Example:\n  sealfs audit export ~/vault.enc --passfile ~/.vault-pass --since 2026-11-01 > audit.jsonl\n\nOnly records up to the first break in the chain are exported (exit 3 then)."
    )]
    Export {
        /// The volume's cipher directory (may be mounted).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        filter: ExportFilter,
    },
}

impl ExportFilter {
    fn to_filter(&self) -> Result<AuditFilter, CliError> {
        AuditFilter::parse(
            self.since.as_deref(),
            self.until.as_deref(),
            self.principal.as_deref(),
            self.path_prefix.as_deref(),
            self.op.as_deref(),
        )
        .map_err(|e| CliError::new(2, e))
    }
}

fn print_break(report: &Value) {
    if let Some(b) = report.get("first_break").filter(|b| !b.is_null()) {
        eprintln!(
            "sealfs: audit chain broken in segment {} at byte {} (expected record {}): {}",
            b["segment"],
            b["offset"],
            b["expected_seq"],
            b["reason"].as_str().unwrap_or("?")
        );
    }
}

fn verify_summary(report: &Value) -> Result<(), CliError> {
    println!(
        "audit log: {} segment(s), {} record(s) verified, last record {}",
        report["segments"], report["records"], report["last_seq"]
    );
    if report["torn_tail_bytes"].as_u64().unwrap_or(0) > 0 {
        println!(
            "note: the last record is incomplete ({} bytes; a crash while appending) and was not counted",
            report["torn_tail_bytes"]
        );
    }
    broken(report)
}

fn broken(report: &Value) -> Result<(), CliError> {
    if report.get("first_break").is_some_and(|b| !b.is_null()) {
        print_break(report);
        return Err(CliError::new(
            exit::AUDIT_BROKEN,
            "the audit log does not verify",
        ));
    }
    Ok(())
}

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

pub(crate) fn cmd_audit_ctl(
    socket: &Path,
    json_out: bool,
    cmd: &AuditCtlCommand,
) -> Result<(), CliError> {
    match cmd {
        AuditCtlCommand::Verify => {
            let v = ctl_call(socket, json!({"op": "audit_verify"}))?;
            if json_out {
                println!("{v}");
                return broken(&v);
            }
            verify_summary(&v)
        }
        AuditCtlCommand::Export(f) => {
            f.to_filter()?; // argument errors before connecting
            let op = json!({"op": "audit_export", "since": f.since, "until": f.until,
                            "principal": f.principal, "path_prefix": f.path_prefix,
                            "operation": f.op});
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut write_failed = false;
            let r = ctl::client::call_stream(socket, op, &mut |line| {
                if !write_failed && writeln!(out, "{}", line["record"]).is_err() {
                    write_failed = true;
                }
            });
            let _ = out.flush();
            match r {
                Ok(Ok(v)) => broken(&v["verify"]),
                Ok(Err(e)) => Err(CliError::new(
                    exit::ERROR,
                    format!("{} ({})", e.message, e.code),
                )),
                Err(e) => Err(CliError::new(
                    exit::ERROR,
                    format!("cannot reach the control socket {}: {e}", socket.display()),
                )),
            }
        }
    }
}

fn open_for_audit(cipherdir: &Path, secret: &SecretArgs) -> Result<Arc<Volume>, CliError> {
    check_is_volume(cipherdir)?;
    let s = read_secret(secret, false)?;
    Ok(Arc::new(Volume::open(cipherdir, &s, true)?))
}

pub(crate) fn cmd_audit(cmd: &AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Verify {
            cipherdir,
            secret,
            json,
        } => {
            let vol = open_for_audit(cipherdir, secret)?;
            let report = verify_log(&vol, &mut |_| {}).map_err(|e| {
                CliError::new(exit::ERROR, format!("cannot read the audit log: {e}"))
            })?;
            let v = json!(report);
            if *json {
                println!("{v}");
                return broken(&v);
            }
            verify_summary(&v)
        }
        AuditCommand::Export {
            cipherdir,
            secret,
            filter,
        } => {
            let f = filter.to_filter()?;
            let vol = open_for_audit(cipherdir, secret)?;
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut write_failed = false;
            let report = verify_log(&vol, &mut |r| {
                if !write_failed && f.matches(r) && writeln!(out, "{}", record_json(r)).is_err() {
                    write_failed = true;
                }
            })
            .map_err(|e| CliError::new(exit::ERROR, format!("cannot read the audit log: {e}")))?;
            let _ = out.flush();
            broken(&json!(report))
        }
    }
}
