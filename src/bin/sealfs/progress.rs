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
///
/// The bar is drawn only once its total is known ([`update`]), so no
/// `0 B/1 B` frame shows before the scan has found anything; rates are
/// whole numbers (`1572/s`, not `1,572.3049/s`).
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
        BarKind::Headers => "[{wide_bar}] {pos}/{len} headers ({rate}, eta {eta})",
        BarKind::Checked => "{msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    };
    let b = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        b.set_style(
            style
                .with_key(
                    "rate",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", s.per_sec());
                    },
                )
                .progress_chars("=> "),
        );
    }
    b
}

/// Sets the bar's position and total, and starts drawing it (on a
/// terminal) once the total is known.
pub(crate) fn update(bar: &indicatif::ProgressBar, pos: u64, total: u64) {
    if total == 0 {
        return;
    }
    bar.set_length(total);
    bar.set_position(pos.min(total));
    if bar.is_hidden() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
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
