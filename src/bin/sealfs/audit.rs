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

use sealfs::ctl::client::{self, Streamed};
use sealfs::ctl::protocol::{
    ChainBreakInfo, ExportSummary, ExportedRecord, Op, Request, RetentionResult, VerifyResult,
};
use sealfs::format::audit::ChainEvent;
use sealfs::policy::audit::PruneOutcome;
use sealfs::policy::audit_stream::verify_streams;
use sealfs::policy::filter::AuditFilter;
use sealfs::volume::Volume;

use crate::args::{AuditCommand, AuditCtlCommand, ExportFilter, SecretArgs};
use crate::ctl::{call_error, ctl_call, Target};
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

/// One break on stderr: where, what, and where the trail resumes.
fn print_one_break(b: &ChainBreakInfo) {
    let resumed = match b.resumed_seq {
        Some(r) if r > b.expected_seq + 1 => format!(
            "; records {}-{} missing or unverifiable, resumed at record {r}",
            b.expected_seq,
            r - 1
        ),
        Some(r) if r == b.expected_seq + 1 => {
            format!(
                "; record {} unverifiable, resumed at record {r}",
                b.expected_seq
            )
        }
        Some(r) => format!("; resumed at record {r}"),
        None => "; nothing after it verifies".to_string(),
    };
    let stream = match &b.host {
        Some(h) => format!(" of host {h}'s stream"),
        None => String::new(),
    };
    eprintln!(
        "sealfs: audit chain broken in segment {}{stream} at byte {} (expected record {}): {}{resumed}",
        b.segment, b.offset, b.expected_seq, b.reason
    );
}

fn print_break(report: &VerifyResult) {
    for b in &report.breaks {
        print_one_break(b);
    }
}

fn verify_summary(report: &VerifyResult) -> Result<(), CliError> {
    if report.streams.is_empty() {
        println!(
            "audit log: {} segment(s), {} record(s) verified, last record {}",
            report.segments, report.records, report.last_seq
        );
    } else {
        println!(
            "audit log: {} stream(s), {} segment(s), {} record(s) verified",
            report.streams.len(),
            report.segments,
            report.records
        );
        for s in &report.streams {
            println!(
                "  {}: {} segment(s), {} record(s), last record {}{}",
                s.host
                    .as_deref()
                    .map_or("local stream".to_string(), |h| format!("host {h}")),
                s.segments,
                s.records,
                s.last_seq,
                match s.breaks {
                    0 => String::new(),
                    n => format!(", {n} break(s)"),
                }
            );
        }
    }
    if let Some(p) = &report.pruned {
        println!(
            "pruned: records 1-{} (segments 1-{}, the last from {}) were pruned on {}; the checkpoint verifies",
            p.through_seq,
            p.through_segment,
            sealfs::format::grants::format_utc(p.last_record_ms / 1000),
            sealfs::format::grants::format_utc(p.pruned_ms / 1000)
        );
    }
    if report.torn_tail_bytes > 0 {
        println!(
            "note: the last record is incomplete ({} bytes; a crash while appending) and was not counted",
            report.torn_tail_bytes
        );
    }
    broken(report)
}

fn broken(report: &VerifyResult) -> Result<(), CliError> {
    if !report.breaks.is_empty() || report.first_break.is_some() {
        print_break(report);
        return Err(CliError::new(
            exit::AUDIT_BROKEN,
            "the audit log does not verify",
        ));
    }
    Ok(())
}

/// Exit 3 after an export that met breaks (each was printed where it
/// happened, between the records around it).
fn exported_breaks(report: &VerifyResult) -> Result<(), CliError> {
    if report.breaks.is_empty() && report.first_break.is_none() {
        return Ok(());
    }
    Err(CliError::new(
        exit::AUDIT_BROKEN,
        format!(
            "the audit log does not verify: {} break(s); {} record(s) verified and exported around them",
            report.breaks.len().max(1),
            report.records
        ),
    ))
}

fn show_prune(json: bool, out: &PruneOutcome) -> Result<(), CliError> {
    if json {
        return print_json(out);
    }
    match out.through_seq {
        Some(seq) => println!(
            "pruned {} segment(s), {} record(s), {} bytes; the log now starts after record {seq} (a checkpoint keeps it verifiable)",
            out.segments, out.records, out.bytes
        ),
        None => println!(
            "nothing to prune: no whole segment matches (the segment being written, and everything from a break in the chain on, are always kept)"
        ),
    }
    if out.leftovers_removed > 0 {
        println!(
            "removed {} segment(s) an interrupted earlier prune had left",
            out.leftovers_removed
        );
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
    socket: &Target,
    json_out: bool,
    cmd: &AuditCtlCommand,
) -> Result<(), CliError> {
    match cmd {
        AuditCtlCommand::Verify => {
            let v: VerifyResult = ctl_call(socket, Op::AuditVerify)?;
            report_verify(&v, json_out)
        }
        AuditCtlCommand::Prune { before, max_size } => {
            if before.is_none() && max_size.is_none() {
                return Err(CliError::new(
                    2,
                    "say what to prune: --before DATE|DURATION (e.g. --before 400d or --before 2026-01-01) and/or --max-size SIZE",
                ));
            }
            let out: PruneOutcome = ctl_call(
                socket,
                Op::AuditPrune {
                    before: before.clone(),
                    max_bytes: *max_size,
                },
            )?;
            show_prune(json_out, &out)
        }
        AuditCtlCommand::Retention {
            max_age,
            max_size,
            off,
            allow_short,
        } => {
            if *off == (max_age.is_some() || max_size.is_some()) {
                return Err(CliError::new(
                    2,
                    "give --max-age DURATION and/or --max-size SIZE, or --off to keep every record",
                ));
            }
            let r: RetentionResult = ctl_call(
                socket,
                Op::AuditRetention {
                    max_age: max_age.map(crate::duration::wire),
                    max_bytes: *max_size,
                    allow_short: *allow_short,
                },
            )?;
            if json_out {
                return print_json(&r);
            }
            match (&r.max_age, r.max_bytes) {
                (None, None) => println!("audit retention: off (every record is kept until `audit prune`)"),
                (age, bytes) => println!(
                    "audit retention: records older than {} and segments beyond {} are pruned by the mount (checked hourly and at every new segment)",
                    age.as_deref().unwrap_or("(no age limit)"),
                    bytes.map_or("(no size limit)".to_string(), |b| format!("{b} bytes"))
                ),
            }
            Ok(())
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
            let req = Request::new(op);
            let r = client::call_stream_checked::<ExportSummary>(
                &socket.socket,
                &req,
                &socket.check,
                &mut |line| match line {
                    Streamed::Record(l) => {
                        if !write_failed && write_record(&mut out, &l.record).is_err() {
                            write_failed = true;
                        }
                    }
                    Streamed::Break(b) => {
                        let _ = out.flush();
                        print_one_break(&b.brk);
                    }
                },
            );
            let _ = out.flush();
            match r {
                Ok(summary) => exported_breaks(&summary.verify),
                Err(e) => Err(call_error(&socket.socket, e)),
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
            let reports = verify_streams(&vol, &mut |_, _| {}).map_err(|e| {
                CliError::new(exit::ERROR, format!("cannot read the audit log: {e}"))
            })?;
            report_verify(&VerifyResult::from(reports.as_slice()), *json)
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
            let reports = verify_streams(&vol, &mut |stream, e| match e {
                ChainEvent::Record(r) => {
                    if !write_failed
                        && f.matches(r)
                        && write_record(&mut out, &ExportedRecord::in_stream(r, stream)).is_err()
                    {
                        write_failed = true;
                    }
                }
                ChainEvent::Break(b) => {
                    let _ = out.flush();
                    print_one_break(&ChainBreakInfo::in_stream(b, stream));
                }
            })
            .map_err(|e| CliError::new(exit::ERROR, format!("cannot read the audit log: {e}")))?;
            let _ = out.flush();
            exported_breaks(&VerifyResult::from(reports.as_slice()))
        }
    }
}
