//! `sealfs ctl audit …` (through the socket) and the offline `sealfs audit
//! …` commands: arguments in, report out; [`sealfs::policy::audit`] does
//! the work.
//!
//! Owns: the audit commands' output (summary, JSON, records as JSON lines)
//! and exit code 3 for a broken chain.
//! Must never: read or verify the log itself.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use sealfs::ctl::client::{self, CallError};
use sealfs::ctl::protocol::{ExportSummary, ExportedRecord, Op, Request, VerifyResult};
use sealfs::policy::audit::verify_log;
use sealfs::policy::filter::AuditFilter;
use sealfs::volume::Volume;

use crate::args::{AuditCommand, AuditCtlCommand, ExportFilter, SecretArgs};
use crate::ctl::ctl_call;
use crate::error::{exit, CliError};
use crate::print_json;
use crate::secret::{check_is_volume, read_unlock};

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

fn print_break(report: &VerifyResult) {
    if let Some(b) = &report.first_break {
        eprintln!(
            "sealfs: audit chain broken in segment {} at byte {} (expected record {}): {}",
            b.segment, b.offset, b.expected_seq, b.reason
        );
    }
}

fn verify_summary(report: &VerifyResult) -> Result<(), CliError> {
    println!(
        "audit log: {} segment(s), {} record(s) verified, last record {}",
        report.segments, report.records, report.last_seq
    );
    if report.torn_tail_bytes > 0 {
        println!(
            "note: the last record is incomplete ({} bytes; a crash while appending) and was not counted",
            report.torn_tail_bytes
        );
    }
    broken(report)
}

fn broken(report: &VerifyResult) -> Result<(), CliError> {
    if report.first_break.is_some() {
        print_break(report);
        return Err(CliError::new(
            exit::AUDIT_BROKEN,
            "the audit log does not verify",
        ));
    }
    Ok(())
}

/// Prints the report as JSON (`--json`) or as a summary; exit 3 if broken.
fn report_verify(report: &VerifyResult, json: bool) -> Result<(), CliError> {
    if json {
        print_json(report)?;
        return broken(report);
    }
    verify_summary(report)
}

pub(crate) fn cmd_audit_ctl(
    socket: &Path,
    json_out: bool,
    cmd: &AuditCtlCommand,
) -> Result<(), CliError> {
    match cmd {
        AuditCtlCommand::Verify => {
            let v: VerifyResult = ctl_call(socket, Op::AuditVerify)?;
            report_verify(&v, json_out)
        }
        AuditCtlCommand::Export(f) => {
            f.to_filter()?; // argument errors before connecting
            let op = Op::AuditExport {
                since: f.since.clone(),
                until: f.until.clone(),
                principal: f.principal.clone(),
                path_prefix: f.path_prefix.clone(),
                operation: f.op.clone(),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut write_failed = false;
            let r = client::call_stream::<ExportSummary>(socket, &Request::new(op), &mut |line| {
                if !write_failed && write_record(&mut out, &line.record).is_err() {
                    write_failed = true;
                }
            });
            let _ = out.flush();
            match r {
                Ok(summary) => broken(&summary.verify),
                Err(CallError::Remote(e)) => Err(CliError::new(
                    exit::ERROR,
                    format!("{} ({})", e.message, e.code),
                )),
                Err(CallError::Io(e)) => Err(CliError::new(
                    exit::ERROR,
                    format!("cannot reach the control socket {}: {e}", socket.display()),
                )),
            }
        }
    }
}

/// One exported record as a JSON line.
fn write_record(out: &mut impl Write, r: &ExportedRecord) -> std::io::Result<()> {
    let v = serde_json::to_value(r).map_err(std::io::Error::other)?;
    writeln!(out, "{v}")
}

fn open_for_audit(cipherdir: &Path, secret: &SecretArgs) -> Result<Arc<Volume>, CliError> {
    check_is_volume(cipherdir)?;
    let u = read_unlock(secret, cipherdir)?;
    Ok(Arc::new(Volume::open(cipherdir, &u, true)?))
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
            report_verify(&VerifyResult::from(&report), *json)
        }
        AuditCommand::Export {
            cipherdir,
            secret,
            filter,
        } => {
            let f = filter.to_filter()?;
            let vol = open_for_audit(cipherdir, secret)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut write_failed = false;
            let report = verify_log(&vol, &mut |r| {
                if !write_failed
                    && f.matches(r)
                    && write_record(&mut out, &ExportedRecord::from(r)).is_err()
                {
                    write_failed = true;
                }
            })
            .map_err(|e| CliError::new(exit::ERROR, format!("cannot read the audit log: {e}")))?;
            let _ = out.flush();
            broken(&VerifyResult::from(&report))
        }
    }
}
