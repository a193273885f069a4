//! The progress indicator of long runs (`verify`, `stats`, `state` on a log
//! over `PROGRESS_BYTES_MIN`): on stderr, only when stderr is a terminal, so
//! scripts and pipes see nothing. The library's scan has no per-segment
//! hook, so it is a spinner with the log's size and the elapsed time rather
//! than a byte-accurate bar.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Logs smaller than this finish before a bar would be worth drawing.
pub const PROGRESS_BYTES_MIN: u64 = 256 << 20;

/// Whether a run over `log_bytes` shows progress.
pub fn wanted(log_bytes: u64, stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && log_bytes > PROGRESS_BYTES_MIN
}

/// The bytes of the segment files named by `inputs` (a directory or files).
pub fn log_bytes(inputs: &[PathBuf]) -> u64 {
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    match inputs {
        [dir] if dir.is_dir() => std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wal"))
                .map(|p| size(&p))
                .sum()
        }),
        files => files.iter().map(|p| size(p)).sum(),
    }
}

/// A running spinner labelled `what`, or `None` when progress is not wanted.
/// Finish it with `finish_and_clear` (dropping it also stops it).
pub fn start(inputs: &[PathBuf], what: &str) -> Option<ProgressBar> {
    let bytes = log_bytes(inputs);
    if !wanted(bytes, std::io::stderr().is_terminal()) {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template"),
    );
    bar.set_message(format!("{what} {} MiB of WAL", bytes >> 20));
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_on_a_terminal_and_past_the_size_floor() {
        // Invariant: pipes and small logs never see a progress bar.
        assert!(!wanted(PROGRESS_BYTES_MIN + 1, false));
        assert!(!wanted(PROGRESS_BYTES_MIN, true));
        assert!(wanted(PROGRESS_BYTES_MIN + 1, true));
    }
}
