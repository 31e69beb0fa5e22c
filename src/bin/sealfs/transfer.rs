//! `sealfs import` and `sealfs export`: a plain tree into a volume and
//! back, without mounting ([`sealfs::transfer`] does the copying).
//!
//! Owns: the transfer summary, its JSON and exit code 3 for a partial copy.
//! Must never: copy anything itself.

use std::path::Path;

use serde::Serialize;

use sealfs::crypto::Argon2Params;
use sealfs::transfer::Report;
use sealfs::volume::Volume;

use crate::args::{SecretArgs, TransferArgs};
use crate::error::{exit, CliError};
use crate::print_json;
use crate::progress::{progress_bar_for, with_progress, BarKind};
use crate::secret::{check_is_volume, read_secret, read_unlock};

fn transfer_tick(p: &sealfs::transfer::Progress) -> impl Fn(&indicatif::ProgressBar) + '_ {
    use std::sync::atomic::Ordering::Relaxed;
    move |bar| {
        // Every setter may redraw. The byte counts go first: a frame drawn
        // between setters then pairs new bytes with the message of the
        // last tick (100 ms old), not a new file count with stale bytes.
        let (fd, ft) = (p.files_done.load(Relaxed), p.files_total.load(Relaxed));
        if p.scanned.load(Relaxed) {
            bar.set_message(format!("files {fd}/{ft}"));
        } else {
            bar.set_message(format!("files {fd}/{ft}+ (scanning)"));
        }
        crate::progress::update(bar, p.bytes_done.load(Relaxed), p.bytes_total.load(Relaxed));
    }
}

fn transfer_options(a: &TransferArgs) -> sealfs::transfer::Options {
    let mut o = sealfs::transfer::Options::default();
    if let Some(n) = a.threads {
        o.threads = n as usize;
    }
    o
}

/// What `sealfs import --json` prints: the report, and whether the volume
/// was created.
#[derive(Serialize)]
struct Imported<'a> {
    #[serde(flatten)]
    report: &'a Report,
    created_volume: bool,
}

/// Prints a transfer's report (problems on stderr, the summary on stdout,
/// or `json_form` as the JSON object) and picks the exit code.
fn finish_transfer<T: Serialize>(
    verb: &str,
    report: &Report,
    json: bool,
    json_form: &T,
) -> Result<(), CliError> {
    if json {
        print_json(json_form)?;
    } else {
        for p in &report.problems {
            eprintln!("sealfs: not {verb}: {}: {}", p.path.display(), p.message);
        }
        if report.hard_linked > 0 {
            eprintln!(
                "sealfs: {} name(s) kept as hard links of a file copied under another name",
                report.hard_linked
            );
        }
        println!(
            "{verb} {} files ({} bytes), {} symlinks, {} new directories; {} files and {} symlinks already up to date; {} not {verb}{} in {}",
            report.files_copied,
            report.bytes_copied,
            report.symlinks,
            report.directories_created,
            report.files_unchanged,
            report.symlinks_unchanged,
            report.problems.len(),
            if report.leftovers_removed > 0 {
                format!("; {} temp files of an interrupted run removed", report.leftovers_removed)
            } else {
                String::new()
            },
            sealfs::transfer::human_duration(std::time::Duration::from_secs_f64(report.seconds)),
        );
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            exit::PARTIAL,
            format!(
                "{} not {verb} (listed above)",
                if report.problems.len() == 1 {
                    "1 entry was".to_string()
                } else {
                    format!("{} entries were", report.problems.len())
                }
            ),
        ))
    }
}

pub(crate) fn cmd_import(
    plaindir: &Path,
    cipherdir: &Path,
    secret: &SecretArgs,
    params: Argon2Params,
    a: &TransferArgs,
) -> Result<(), CliError> {
    if !plaindir.is_dir() {
        return Err(CliError::new(
            exit::ERROR,
            format!("PLAINDIR {} is not a directory", plaindir.display()),
        ));
    }
    let exists = cipherdir.exists();
    let empty = exists
        && std::fs::read_dir(cipherdir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    let created = if Volume::looks_like_volume(cipherdir) {
        false
    } else if !exists || empty {
        true
    } else {
        return Err(CliError::new(
            exit::BAD_VOLUME,
            format!(
                "{} is not a sealfs volume (no sealfs.toml) and not empty; give a new or empty directory to create one",
                cipherdir.display()
            ),
        ));
    };
    let vault = if created {
        let s = read_secret(secret, true)?;
        Volume::create(cipherdir, &s, params)?;
        if !a.json {
            eprintln!("sealfs: created volume in {}", cipherdir.display());
        }
        sealfs::Vault::open(cipherdir, &s)?
    } else {
        sealfs::Vault::open(cipherdir, &read_unlock(secret, cipherdir)?)?
    };
    let progress = sealfs::transfer::Progress::default();
    let opts = transfer_options(a);
    let report = with_progress(
        progress_bar_for(BarKind::Transfer),
        || sealfs::transfer::import(plaindir, &vault, &opts, &progress),
        transfer_tick(&progress),
    )??;
    finish_transfer(
        "imported",
        &report,
        a.json,
        &Imported {
            report: &report,
            created_volume: created,
        },
    )
}

pub(crate) fn cmd_export(
    cipherdir: &Path,
    plaindir: &Path,
    secret: &SecretArgs,
    a: &TransferArgs,
) -> Result<(), CliError> {
    check_is_volume(cipherdir)?;
    let vault = sealfs::Vault::open_read_only(cipherdir, &read_unlock(secret, cipherdir)?)?;
    let progress = sealfs::transfer::Progress::default();
    let opts = transfer_options(a);
    let report = with_progress(
        progress_bar_for(BarKind::Transfer),
        || sealfs::transfer::export(&vault, plaindir, &opts, &progress),
        transfer_tick(&progress),
    )??;
    finish_transfer("exported", &report, a.json, &report)
}
