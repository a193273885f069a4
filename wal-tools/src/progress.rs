//! The progress bar of long runs (`verify`, `stats`, `state` on a log over
//! `PROGRESS_BYTES_MIN`): on stderr, only when stderr is a terminal, so
//! scripts and pipes see nothing. It counts bytes: the segment files the
//! library's scan has validated (`scan_dir_with_progress` reports each
//! segment as it finishes), then, for `stats` and `state`, the frame bytes
//! decoded or replayed.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Logs smaller than this finish before a bar would be worth drawing.
pub const PROGRESS_BYTES_MIN: u64 = 256 << 20;

/// Bytes a pass counts locally before it moves the bar: one atomic update a
/// mebibyte keeps the bar off the per-record path.
const STEP_BYTES: u64 = 1 << 20;

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

/// A byte-counting bar, or nothing when progress is not wanted. Cleared from
/// the terminal when dropped.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No bar at all (`list`, `follow`, small logs, pipes).
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// A bar over the segment files of `inputs`, labelled `what`, when
    /// stderr is a terminal and the log is over the size floor.
    pub fn for_log(inputs: &[PathBuf], what: &str) -> Progress {
        let bytes = log_bytes(inputs);
        if !wanted(bytes, std::io::stderr().is_terminal()) {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:12} [{bar:40}] {binary_bytes}/{binary_total_bytes} \
                 {binary_bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Progress { bar: Some(bar) }
    }

    /// `bytes` more are done.
    pub fn inc(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// Starts the next pass: `total` bytes, labelled `what`, from zero.
    pub fn next_pass(&self, what: &str, total: u64) {
        // Position first, length last: no frame shows the new pass's
        // label or length against the old pass's count.
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_message(what.to_string());
            bar.set_length(total);
        }
    }

    /// Removes the bar before the results are printed.
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// A counter for a per-record loop: it moves the bar every
    /// `STEP_BYTES`, and by the rest when dropped.
    pub fn counter(&self) -> Counter<'_> {
        Counter {
            progress: self,
            pending: 0,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// See [`Progress::counter`].
pub struct Counter<'a> {
    progress: &'a Progress,
    pending: u64,
}

impl Counter<'_> {
    pub fn add(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.pending >= STEP_BYTES {
            self.progress.inc(self.pending);
            self.pending = 0;
        }
    }
}

impl Drop for Counter<'_> {
    fn drop(&mut self) {
        self.progress.inc(self.pending);
    }
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
