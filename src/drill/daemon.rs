//! The drill's `wconfd`: spawning it on the data directory, waiting for its
//! ready line within the liveness bound, SIGKILL, SIGSTOP/SIGCONT, its
//! warnings; and the log read back read-only, to compare it before and
//! after a recovery killed part-way (idempotent recovery).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
        self.spawn_with(&[])
    }

    /// [`Spawner::spawn`] with extra environment variables (failpoints).
    pub fn spawn_with(&self, env: &[(String, String)]) -> Result<Daemon, String> {
        let mut child = Command::new(&self.wconfd)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
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
                    // A failpoint's report is how the drill knows the
                    // death was the point: it is kept past the cap.
                    if l.len() < STDERR_LINES_MAX
                        || line.starts_with(crate::failpoints::KILL_REPORT)
                    {
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

    /// Waits up to `bound` for the daemon to exit on its own, and reaps it.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    // Polling with a deadline: the child gives no other signal.
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => return None,
            }
        }
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

/// The log read back without locking or repairing it, remembered between
/// reads so each read replays only the records that are new.
#[derive(Default)]
pub struct LogReader {
    /// The state of every record read so far.
    state: State,
    /// The CRC of each record read so far, by LSN - 1 - `skipped`: a
    /// fingerprint of its bytes (the scan checked each CRC against them).
    crcs: Vec<u32>,
    /// LSNs never read: the daemon collected their segments after a
    /// snapshot before the drill read them, and `state` went on from that
    /// snapshot.
    skipped: u64,
}

/// What [`LogReader::compare`] found.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The last LSN of the remembered log.
    pub lsn: u64,
    /// Fingerprints of records `1..=lsn` (those still in the log) before
    /// and now: their CRCs folded (the same bytes replay to the same
    /// state); when those differ and the log starts at LSN 1, the digests
    /// of the two replayed states.
    pub before: u64,
    pub after: u64,
    /// The kinds of the records now past `lsn`.
    pub kinds_after: Vec<u16>,
}

/// One pass over the valid records of the log in `dir`.
fn for_each_record(
    dir: &Path,
    mut each: impl FnMut(&crate::wal::reader::Record<'_>) -> Result<(), String>,
) -> Result<Option<String>, String> {
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
    for (segment, seg_scan) in scan.segments.iter().zip(&scan.scans) {
        for frame in Frames::new(&segment.view, seg_scan.end as usize) {
            let frame = frame.map_err(|e| {
                format!(
                    "{} changed while reading, at offset {}",
                    segment.path.display(),
                    e.offset
                )
            })?;
            each(&frame)?;
        }
    }
    Ok(damage)
}

fn fold_crcs(crcs: &[u32]) -> u64 {
    crcs.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ u64::from(*c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl LogReader {
    /// Reads the records written since the last read and applies them.
    /// Returns damage that is not a torn tail, if the scan stopped at some.
    pub fn advance(&mut self, dir: &Path) -> Result<Option<String>, String> {
        let state = &mut self.state;
        let crcs = &mut self.crcs;
        let skipped = &mut self.skipped;
        for_each_record(dir, |frame| {
            if frame.lsn <= state.applied_lsn() {
                return Ok(());
            }
            if frame.lsn != state.applied_lsn() + 1 {
                // Collected after a snapshot: go on from the oldest
                // snapshot that reaches the log as it is now.
                let jump = format!(
                    "the log jumps from LSN {} to {}",
                    state.applied_lsn(),
                    frame.lsn
                );
                let snapshot = crate::snapshot::list(dir)
                    .map_err(|e| format!("{jump}: {e}"))?
                    .into_iter()
                    .filter(|f| f.lsn + 1 >= frame.lsn && f.lsn > state.applied_lsn())
                    .min_by_key(|f| f.lsn)
                    .ok_or_else(|| format!("{jump} and no snapshot covers the gap"))?;
                let loaded =
                    crate::snapshot::load(&snapshot.path).map_err(|e| format!("{jump}: {e}"))?;
                *state = loaded.state;
                crcs.clear();
                *skipped = snapshot.lsn;
                if frame.lsn <= state.applied_lsn() {
                    return Ok(());
                }
            }
            apply_frame(state, frame).map_err(|e| e.to_string())?;
            crcs.push(frame.header.crc);
            Ok(())
        })
    }

    /// The last LSN read.
    pub fn lsn(&self) -> u64 {
        self.state.applied_lsn()
    }

    /// Reads the log again and compares its records up to [`Self::lsn`]
    /// with the remembered ones, without remembering the new read. Records
    /// that segment collection removed after a snapshot are not compared.
    pub fn compare(&self, dir: &Path) -> Result<Comparison, String> {
        let lsn = self.lsn();
        let base = self.skipped + 1;
        let mut first_lsn = None;
        let mut crcs = Vec::with_capacity(self.crcs.len());
        let mut kinds_after = vec![];
        for_each_record(dir, |frame| {
            if frame.lsn > lsn {
                kinds_after.push(frame.kind);
            } else if frame.lsn >= base {
                first_lsn.get_or_insert(frame.lsn);
                crcs.push(frame.header.crc);
            }
            Ok(())
        })?;
        let from = (first_lsn.unwrap_or(lsn + 1).clamp(base, lsn + 1) - base) as usize;
        let remembered = &self.crcs[from.min(self.crcs.len())..];
        let (mut before, mut after) = (fold_crcs(remembered), fold_crcs(&crcs));
        if before != after && from == 0 && base == 1 {
            // The records differ: say whether the states they replay to do.
            let mut replayed = State::new();
            for_each_record(dir, |frame| {
                if frame.lsn <= lsn {
                    apply_frame(&mut replayed, frame).map_err(|e| e.to_string())?;
                }
                Ok(())
            })?;
            let digest = |s: &State| s.digest().map_err(|e| e.to_string());
            (before, after) = (digest(&self.state)?, digest(&replayed)?);
        }
        Ok(Comparison {
            lsn,
            before,
            after,
            kinds_after,
        })
    }
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
