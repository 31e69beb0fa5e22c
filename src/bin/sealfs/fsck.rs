//! `sealfs fsck`: check (and salvage) a volume offline, or check a mounted
//! one through its control socket; prints the report, exits as fsck(8).
//!
//! Owns: the fsck report's human form and fsck(8)'s exit codes.
//! Must never: check anything itself (the volume layer does).

use std::path::PathBuf;

use serde::Serialize;

use sealfs::ctl::protocol::{FsckResult, Op};
use sealfs::daemon::raise_fd_limit;

use crate::args::SecretArgs;
use crate::ctl::{ctl_call, Target};
use crate::error::{exit, CliError};
use crate::print_json;
use crate::progress::{progress_bar_for, with_progress, BarKind};
use crate::secret::{check_is_volume, read_unlock};

/// What `sealfs fsck --json` prints when it could not run.
#[derive(Serialize)]
struct CouldNotRun<'a> {
    error: &'a str,
    exit_code: u8,
}

/// What `sealfs fsck` checks: a cipher directory, or a mounted volume
/// through its control socket.
pub(crate) enum FsckTarget {
    Offline(PathBuf),
    Socket(Target),
}

pub(crate) fn cmd_fsck(
    target: FsckTarget,
    secret: &SecretArgs,
    salvage: bool,
    json: bool,
) -> Result<(), CliError> {
    use sealfs::volume::fsck::{fsck, FsckOptions, FsckProgress};
    let could_not_run = |e: CliError| {
        if json {
            let _ = print_json(&CouldNotRun {
                error: &e.msg,
                exit_code: exit::FSCK_FAILED,
            });
        }
        CliError::new(exit::FSCK_FAILED, e.msg)
    };
    let report: FsckResult = match target {
        FsckTarget::Socket(socket) => ctl_call(&socket, Op::Fsck).map_err(could_not_run)?,
        FsckTarget::Offline(cipherdir) => {
            check_is_volume(&cipherdir).map_err(could_not_run)?;
            let s = read_unlock(secret, &cipherdir).map_err(could_not_run)?;
            raise_fd_limit(); // one descriptor per directory level of the walk
            let progress = FsckProgress::default();
            let report = with_progress(
                progress_bar_for(BarKind::Checked),
                || fsck(&cipherdir, &s, &FsckOptions { salvage }, &progress),
                |bar| {
                    use std::sync::atomic::Ordering::Relaxed;
                    bar.set_length(progress.total_bytes.load(Relaxed).max(1));
                    bar.set_position(progress.done_bytes.load(Relaxed));
                },
            )
            .map_err(|e| CliError::new(exit::FSCK_FAILED, e.msg))?
            .map_err(|e| could_not_run(CliError::from(e)))?;
            FsckResult::from(&report)
        }
    };
    let problems = &report.problems;
    if json {
        print_json(&report).map_err(|e| CliError::new(exit::FSCK_FAILED, e.msg))?;
    } else {
        for p in problems {
            let place = match &p.path {
                Some(path) => format!("{path} [{}]", p.backing),
                None => format!("[{}]", p.backing),
            };
            println!("{}: {place}: {}", p.kind, p.message);
            match (p.repair.as_str(), &p.action) {
                ("repaired", Some(a)) => println!("  repaired: {a}"),
                ("unrepairable", Some(a)) => println!("  not repairable: {a}"),
                ("failed", Some(a)) => println!("  {a}"),
                _ => {}
            }
        }
        let st = &report.stats;
        let repaired = problems.iter().filter(|p| p.repaired()).count();
        println!(
            "checked {} directories, {} files ({} chunks, {} bytes), {} symlinks, {} other: {} problem(s){}",
            st.directories,
            st.files,
            st.chunks,
            st.bytes,
            st.symlinks,
            st.other,
            problems.len(),
            if salvage {
                format!(", {repaired} repaired")
            } else if problems.is_empty() {
                String::new()
            } else {
                " (run with --salvage to repair)".into()
            }
        );
    }
    if problems.is_empty() {
        Ok(())
    } else if problems.iter().all(|p| p.repaired()) {
        Err(CliError::new(
            exit::FSCK_REPAIRED,
            "problems found; all repaired",
        ))
    } else {
        Err(CliError::new(
            exit::FSCK_PROBLEMS,
            "problems found and left unrepaired",
        ))
    }
}
