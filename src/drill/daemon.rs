//! The drill's `wconfd`: spawning it on the data directory, waiting for its
//! ready line within the liveness bound, SIGKILL, SIGSTOP/SIGCONT, its
//! warnings; and the log read back read-only (the state digest up to an
//! LSN, for idempotent recovery).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::replay::apply_frame;
use crate::state::State;
use crate::wal::reader::Frames;
use crate::wal::recovery::scan_dir;
use crate::wal::storage::StdStorage;

/// The warning `wal::recovery` logs when it cuts a torn tail.
pub const TORN_TAIL_WARNING: &str = "torn tail cut";

/// Warning lines kept per daemon run, for failure reports.
const STDERR_LINES_MAX: usize = 200;

/// How the drill starts `wconfd`.
#[derive(Debug, Clone)]
pub struct Spawner {
    pub wconfd: PathBuf,
    pub data_dir: PathBuf,
    /// Passed through to `wconfd` after the drill's own flags.
    pub extra: Vec<String>,
}

/// A running (or starting) `wconfd`.
pub struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: mpsc::Receiver<String>,
    spawned: Instant,
}

/// What the ready line said.
#[derive(Debug, Clone)]
pub struct Ready {
    pub base: String,
    pub epoch: u64,
    /// The LSN of this start's epoch record.
    pub lsn: u64,
    pub elapsed: Duration,
}

impl Spawner {
    /// Starts `wconfd` on an ephemeral port, logging warnings to a pipe.
    pub fn spawn(&self) -> Result<Daemon, String> {
        let mut child = Command::new(&self.wconfd)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.wconfd.display()))?;
        let spawned = Instant::now();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = lines.lock().expect("stderr lines");
                    if l.len() < STDERR_LINES_MAX {
                        l.push(line);
                    }
                }
            });
        }
        let (tx, stdout) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Daemon {
            child,
            stderr,
            stdout,
            spawned,
        })
    }
}

impl Daemon {
    /// Waits for `wconfd ready on http://ADDR (epoch E, lsn L)` until
    /// `bound` after the spawn.
    pub fn wait_ready(&mut self, bound: Duration) -> Result<Ready, String> {
        let deadline = self.spawned + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(ready) = parse_ready(&line, self.spawned.elapsed()) {
                        return Ok(ready);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "wconfd did not serve within {} ms",
                        bound.as_millis()
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_or("?".into(), |s| s.to_string());
                    return Err(format!(
                        "wconfd exited before serving ({status}): {}",
                        self.stderr_lines().join("\n")
                    ));
                }
            }
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL and reap: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        kill(self.pid(), signal).map_err(|e| format!("{signal} to wconfd: {e}"))
    }

    /// A clean stop (SIGTERM), waited for.
    pub fn stop(mut self) {
        let _ = kill(self.pid(), Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lines").clone()
    }

    pub fn spawned(&self) -> Instant {
        self.spawned
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A paused daemon must not stay stopped behind us.
            let _ = kill(self.pid(), Signal::SIGCONT);
            self.kill();
        }
    }
}

fn parse_ready(line: &str, elapsed: Duration) -> Option<Ready> {
    let rest = line.strip_prefix("wconfd ready on ")?;
    let (base, rest) = rest.split_once(" (epoch ")?;
    let (epoch, rest) = rest.split_once(", lsn ")?;
    let lsn = rest.trim_end_matches(')');
    Some(Ready {
        base: base.to_string(),
        epoch: epoch.parse().ok()?,
        lsn: lsn.parse().ok()?,
        elapsed,
    })
}

/// The log as it is on disk, read without locking or repairing it.
#[derive(Debug, Clone)]
pub struct LogRead {
    /// The state of records `1..=lsn`.
    pub digest: u64,
    pub lsn: u64,
    /// The kinds of the records after `lsn`.
    pub kinds_after: Vec<u16>,
    /// Whether the scan stopped at damage that is not a torn tail.
    pub damage: Option<String>,
}

/// Replays the log in `dir` up to `upto` (all of it with `None`), read-only,
/// and digests the state.
pub fn read_log(dir: &Path, upto: Option<u64>) -> Result<LogRead, String> {
    let scan = scan_dir(&StdStorage, dir).map_err(|e| e.to_string())?;
    let damage = match &scan.problem {
        Some((i, p)) if !scan.problem_is_torn_tail() => Some(format!(
            "{} at offset {} (LSN {}): {}",
            scan.segments[*i].path.display(),
            p.offset,
            p.lsn,
            p.damage
        )),
        _ => None,
    };
    let mut state = State::new();
    let mut kinds_after = vec![];
    for (segment, seg_scan) in scan.segments.iter().zip(&scan.scans) {
        for frame in Frames::new(&segment.view, seg_scan.end as usize) {
            let frame = frame.map_err(|e| {
                format!(
                    "{} changed while reading, at offset {}",
                    segment.path.display(),
                    e.offset
                )
            })?;
            if upto.is_some_and(|u| frame.lsn > u) {
                kinds_after.push(frame.kind);
                continue;
            }
            apply_frame(&mut state, &frame).map_err(|e| e.to_string())?;
        }
    }
    Ok(LogRead {
        digest: state.digest().map_err(|e| e.to_string())?,
        lsn: state.applied_lsn(),
        kinds_after,
        damage,
    })
}

/// Side files recovery left for cut bytes.
pub fn broken_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(crate::wal::segment::BROKEN_SUFFIX)
            })
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_parses() {
        // Invariant: the drill reads the address, epoch and LSN exactly as
        // `wconfd` prints them.
        let r = parse_ready(
            "wconfd ready on http://127.0.0.1:4321 (epoch 7, lsn 99)",
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            (r.base.as_str(), r.epoch, r.lsn),
            ("http://127.0.0.1:4321", 7, 99)
        );
        assert!(parse_ready("something else", Duration::ZERO).is_none());
    }
}
