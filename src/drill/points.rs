//! Kills at named failpoints (see `crate::failpoints`): the plan of a
//! failpoint drill, the environment that tells a failpoints-built `wconfd`
//! where to SIGKILL itself, waiting for that death and checking it was the
//! point (not some other death), how many times a recovery point can be
//! hit in a directory, and the torn tail a recovery point needs.

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use crate::failpoints::{FaultAt, KillAt, ARM_ENV, FAULT_ENV, KILL_ENV};
use crate::wal::reader::Frames;
use crate::wal::recovery::scan_dir;
use crate::wal::segment::{is_temp_name, parse_lsn_name, parse_segment_name};
use crate::wal::storage::StdStorage;

/// One cycle of a failpoint drill.
#[derive(Debug, Clone, Default)]
pub struct PointCycle {
    /// The serving daemon SIGKILLs itself at this hit of this point, hits
    /// counted from the moment the load runs (start-up and the drill's
    /// checks pass first). `None`: a random-time SIGKILL, as in a plain drill.
    pub kill: Option<KillAt>,
    /// Instead of a kill: the serving daemon's I/O call at this point
    /// fails (EIO or ENOSPC), and the daemon must stop by itself
    /// (fail-stop) without acknowledging the failed batch.
    pub fault: Option<FaultAt>,
    /// Then the first restart SIGKILLs itself at this recovery point, at a
    /// hit drawn from those the directory makes possible (see
    /// [`recovery_hits`]). `None`: that restart is killed at a random moment.
    pub recovery: Option<String>,
    /// Before that restart, tear the log's last batch as a kill inside the
    /// write call would have (see [`tear_tail`]), so the torn-tail repair
    /// runs. Only for a `kill` between a batch's write and its
    /// acknowledgement (`wal::write::after`, `wal::fdatasync::before`):
    /// tearing an acknowledged batch would be a loss the drill caused.
    pub tear_tail: bool,
}

/// The kills after which the log's last batch is known unacknowledged,
/// so [`PointCycle::tear_tail`] may tear it.
pub const TEARABLE_AFTER: [&str; 2] = ["wal::write::after", "wal::fdatasync::before"];

/// The points placed before a WAL I/O call whose failure stops the writer
/// (fail-stop), with the errors a `--storage-faults` drill injects there.
/// Snapshot and collection steps are not here: their failure only fails
/// that snapshot, and the daemon rightly goes on.
pub const FAULT_POINTS: [(&str, &[&str]); 9] = [
    ("wal::write::before", &["EIO", "ENOSPC"]),
    ("wal::fdatasync::before", &["EIO"]),
    ("segment::create::before", &["EIO", "ENOSPC"]),
    ("segment::create_dir_fsync::before", &["EIO"]),
    ("segment::preallocate::before", &["EIO", "ENOSPC"]),
    ("segment::header_write::before", &["EIO", "ENOSPC"]),
    ("segment::fsync::before", &["EIO"]),
    ("segment::rename::before", &["EIO"]),
    ("segment::dir_fsync::before", &["EIO"]),
];

/// The segment size a `--storage-faults` drill gives `wconfd` (unless told
/// otherwise), so segment rolls, and their faults, come every few requests.
pub const FAULT_SEGMENT_ARG: &str = "--segment-size=64KiB";

/// A `--storage-faults` plan of `kills` cycles: every other one (the first
/// included, so a `wconfd` without failpoints is refused at once) a fault
/// at a random point, hit and error; the others random-time SIGKILLs.
pub fn storage_fault_plan(rng: &mut impl rand::Rng, kills: usize) -> Vec<PointCycle> {
    (0..kills)
        .map(|i| PointCycle {
            fault: (i % 2 == 0).then(|| {
                let (point, errors) = FAULT_POINTS[rng.gen_range(0..FAULT_POINTS.len())];
                let nth_max = if point.starts_with("wal::") { 20 } else { 2 };
                FaultAt {
                    at: KillAt {
                        point: point.to_string(),
                        nth: rng.gen_range(1..=nth_max),
                    },
                    error: errors[rng.gen_range(0..errors.len())].to_string(),
                }
            }),
            ..PointCycle::default()
        })
        .collect()
}

/// The environment of a daemon that must fail at `fault` (armed by `arm`).
pub fn fault_env(fault: &FaultAt, arm: &Path) -> Vec<(String, String)> {
    vec![
        (FAULT_ENV.to_string(), fault.env_value()),
        (ARM_ENV.to_string(), arm.display().to_string()),
    ]
}

/// Arms the serving daemon's fault and waits for it to stop by itself:
/// an exit with an error code (fail-stop), not a signal, after the line
/// that says the fault was injected.
pub fn await_fault(daemon: &mut Daemon, fault: &FaultAt, arm: &Path) -> Result<(), String> {
    std::fs::File::create(arm).map_err(|e| format!("arming {}: {e}", arm.display()))?;
    let status = daemon.wait_exit(POINT_WAIT);
    let _ = std::fs::remove_file(arm);
    let what = format!("{} at {} hit {}", fault.error, fault.at.point, fault.at.nth);
    let status = status.ok_or_else(|| {
        format!(
            "the fault {what} did not stop wconfd within {} s (never reached, or no fail-stop)",
            POINT_WAIT.as_secs()
        )
    })?;
    if status.success() || status.code().is_none() {
        return Err(format!(
            "wconfd ended ({status}) after the fault {what}; expected a fail-stop exit: {}",
            daemon.stderr_lines().join("\n")
        ));
    }
    reported(daemon, &fault.report_line())
        .ok_or_else(|| format!("wconfd stopped ({status}) but never reported the fault {what}"))
}

/// Waits for `line` among the reaped daemon's stderr lines (the reader is
/// a thread, so it may lag behind the death).
fn reported(daemon: &Daemon, line: &str) -> Option<()> {
    let deadline = Instant::now() + REPORT_WAIT;
    while Instant::now() < deadline {
        if daemon.stderr_lines().iter().any(|l| l == line) {
            return Some(());
        }
        std::thread::sleep(POLL);
    }
    None
}

/// How long the serving daemon may take to reach its point under load.
pub const POINT_WAIT: Duration = Duration::from_secs(30);
/// How long the report line may lag behind the reaped death (the stderr
/// reader is a thread).
const REPORT_WAIT: Duration = Duration::from_secs(5);
/// What a tear writes over the back half of a frame.
const TEAR_BYTE: u8 = 0xa5;
/// Poll period while waiting for a death.
const POLL: Duration = Duration::from_millis(2);

/// The file whose existence arms the kill of drill `drill_id`'s run `run`.
pub fn arm_path(drill_id: &str, run: u32) -> PathBuf {
    std::env::temp_dir().join(format!("wconf-drill-{drill_id}-arm-{run}"))
}

/// The environment asking `wconfd` to die at `kill` (armed by `arm`).
pub fn kill_env(kill: &KillAt, arm: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![(KILL_ENV.to_string(), kill.env_value())];
    if let Some(arm) = arm {
        env.push((ARM_ENV.to_string(), arm.display().to_string()));
    }
    env
}

/// Arms the serving daemon's kill and waits for it to die there.
pub fn await_kill(daemon: &mut Daemon, kill: &KillAt, arm: &Path) -> Result<(), String> {
    std::fs::File::create(arm)
        .and_then(|mut f| f.flush())
        .map_err(|e| format!("arming {}: {e}", arm.display()))?;
    let died = await_point_death(daemon, kill, POINT_WAIT);
    let _ = std::fs::remove_file(arm);
    died
}

/// Waits up to `bound` for the daemon to die by SIGKILL at `kill`, and
/// checks that it said so on stderr just before.
pub fn await_point_death(
    daemon: &mut Daemon,
    kill: &KillAt,
    bound: Duration,
) -> Result<(), String> {
    let what = format!("failpoint {} hit {}", kill.point, kill.nth);
    let Some(status) = daemon.wait_exit(bound) else {
        return Err(format!(
            "{what} was not reached within {} s",
            bound.as_secs()
        ));
    };
    if status.signal() != Some(nix::sys::signal::Signal::SIGKILL as i32) {
        return Err(format!(
            "wconfd ended ({status}) instead of dying at {what}: {}",
            daemon.stderr_lines().join("\n")
        ));
    }
    reported(daemon, &kill.report_line())
        .ok_or_else(|| format!("wconfd died by SIGKILL but never reported {what} (another death?)"))
}

fn names(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// How many times a restart on `dir` hits the recovery `point` (the log
/// ending at `log_lsn`): one per segment for the scan, per temporary file
/// for their removal, per record after the newest snapshot for replay, one
/// for the others. `Err` when the directory cannot reach the point at all.
pub fn recovery_hits(point: &str, dir: &Path, log_lsn: u64) -> Result<u64, String> {
    let names = names(dir)?;
    let count = |f: &dyn Fn(&str) -> bool| names.iter().filter(|n| f(n)).count() as u64;
    let hits = match point {
        "recovery::scan::segment" => count(&|n| parse_segment_name(n).is_some()),
        "recovery::remove_temp::before" => count(&|n| is_temp_name(n)),
        "snapshot::remove_temp::before" => {
            count(&|n| parse_lsn_name(n, crate::snapshot::SNAPSHOT_TEMP_SUFFIX).is_some())
        }
        "replay::record::before" => {
            let snapshot_lsn = names
                .iter()
                .filter_map(|n| crate::snapshot::parse_snapshot_name(n))
                .max()
                .unwrap_or(0);
            log_lsn.saturating_sub(snapshot_lsn)
        }
        _ => 1,
    };
    if hits == 0 {
        return Err(format!(
            "the restart cannot reach {point} in {}: nothing there for it",
            dir.display()
        ));
    }
    Ok(hits)
}

/// Tears the last batch of the log, which the caller knows was never
/// acknowledged (its daemon died between writing it and acknowledging it):
/// the back half of its last frame becomes garbage, as a kill inside the
/// write call leaves it. Checks recovery will see a torn tail (and nothing
/// worse); recovery then cuts the whole batch.
pub fn tear_tail(dir: &Path) -> Result<(), String> {
    let scan = scan_dir(&StdStorage, dir).map_err(|e| e.to_string())?;
    if scan.problem.is_some() {
        return Err(format!("{} is already damaged", dir.display()));
    }
    let (Some(file), Some(last)) = (scan.segments.last(), scan.scans.last()) else {
        return Err(format!("{} has no segment to tear", dir.display()));
    };
    let Some((offset, len)) = Frames::new(&file.view, last.end as usize)
        .filter_map(Result::ok)
        .last()
        .map(|r| (r.offset, r.header.frame_len as u64))
    else {
        return Err(format!("{} has no frame to tear", file.path.display()));
    };
    let path = file.path.clone();
    drop(scan);
    let keep = len / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(&vec![TEAR_BYTE; (len - keep) as usize], offset + keep))
        .map_err(|e| format!("tearing {}: {e}", path.display()))?;
    let scan = scan_dir(&StdStorage, dir).map_err(|e| e.to_string())?;
    if !scan.problem_is_torn_tail() {
        return Err(format!(
            "the tear of {} at offset {offset} does not read as a torn tail",
            path.display()
        ));
    }
    Ok(())
}
