//! Progress bars of the long commands (import, export, rewrap, fsck):
//! drawn on stderr when it is a terminal, hidden otherwise.
//!
//! Owns: the bar templates and the ticking thread.
//! Must never: draw on a pipe or a log.

use crate::error::{exit, CliError};

/// What a progress bar counts.
pub(crate) enum BarKind {
    /// Files and bytes of an import or export.
    Transfer,
    /// Headers visited by a rewrap.
    Headers,
    /// Ciphertext bytes checked by fsck.
    Checked,
}

/// The progress bar of long commands: drawn on stderr when it is a
/// terminal, hidden otherwise (scripts, logs, pipes).
pub(crate) fn progress_bar_for(kind: BarKind) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let template = match kind {
        // wide_bar takes what the terminal's width leaves, so a line never
        // wraps (a wrapped line leaves a trail of old frames behind).
        BarKind::Transfer => {
            "{msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})"
        }
        BarKind::Headers => "[{wide_bar}] {pos}/{len} headers ({per_sec}, eta {eta})",
        BarKind::Checked => {
            "[{wide_bar}] {bytes}/{total_bytes} checked ({bytes_per_sec}, eta {eta})"
        }
    };
    let b = indicatif::ProgressBar::new(1);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

/// Runs `job` on a thread of its own while `tick` updates `bar` every
/// 100 ms; clears the bar when the job is done.
pub(crate) fn with_progress<T: Send>(
    bar: indicatif::ProgressBar,
    job: impl FnOnce() -> T + Send,
    tick: impl Fn(&indicatif::ProgressBar),
) -> Result<T, CliError> {
    std::thread::scope(|s| {
        let h = s.spawn(job);
        while !h.is_finished() {
            tick(&bar);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        tick(&bar);
        bar.finish_and_clear();
        h.join()
            .map_err(|_| CliError::new(exit::ERROR, "worker thread panicked"))
    })
}
