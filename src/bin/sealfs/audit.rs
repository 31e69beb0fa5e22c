//! `sealfs ctl audit …` (through the socket) and the offline `sealfs audit
//! …` commands: arguments in, report out; [`sealfs::policy::audit`] does
//! the work.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use sealfs::ctl::{self, record_json, AuditFilter};
use sealfs::policy::audit::verify_log;
use sealfs::volume::Volume;

use crate::args::{AuditCommand, AuditCtlCommand, ExportFilter, SecretArgs};
use crate::ctl::ctl_call;
use crate::error::{exit, CliError};
use crate::secret::{check_is_volume, read_secret};

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
