//! `wal-dump state`: the config and lock table as of an LSN, rebuilt as the
//! daemon recovers: the newest snapshot at or below the LSN
//! (`wconf::snapshot`), then the log's records after it through
//! `State::apply` (so the two cannot disagree about what a record means).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use wconf::replay::apply_frame;
use wconf::snapshot::load_newest_at_or_below;
use wconf::state::State;

use crate::decode::mode_name;
use crate::exit;
use crate::log::{Fatal, Log};
use crate::progress::Progress;

pub const SCHEMA: &str = "wal-dump/state/v1";
pub const DIFF_SCHEMA: &str = "wal-dump/state-diff/v1";

pub fn run(dir: &Path, at: Option<u64>, diff: Option<&[u64]>) -> Result<u8, Fatal> {
    if !dir.is_dir() {
        return Err(Fatal::usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let progress = Progress::for_log(&[dir.to_path_buf()], "scanning");
    let log = Log::open(&[dir.to_path_buf()], &progress)?;
    let doc = match (at, diff) {
        (Some(at), _) => state_json(&replay_to(dir, &log, at, &progress)?, at),
        (None, Some([a, b])) => {
            let before = state_json(&replay_to(dir, &log, *a, &progress)?, *a);
            let after = state_json(&replay_to(dir, &log, *b, &progress)?, *b);
            let patch = json_patch::diff(&before, &after);
            json!({
                "schema": DIFF_SCHEMA,
                "from_lsn": a,
                "to_lsn": b,
                "patch": patch,
            })
        }
        _ => return Err(Fatal::usage("give --at LSN or --diff LSN1 LSN2")),
    };
    progress.clear();
    println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    if let Some(stop) = log.stop.as_ref().filter(|s| !s.torn_tail) {
        eprintln!("wal-dump: {}", stop.describe());
    }
    Ok(exit::CLEAN)
}

/// A state rebuilt as of an LSN, and the snapshot it started from.
pub struct Rebuilt {
    pub state: State,
    /// The snapshot file and its LSN; `None`: replayed from LSN 1.
    pub snapshot: Option<(PathBuf, u64)>,
}

/// Rebuilds the state after LSN `at`: loads the newest snapshot of `dir` at
/// or below `at` (an older one when a newer one does not load, with a
/// warning), then replays the log's records after it up to `at`, counting
/// frame bytes on `progress`. Without a snapshot the log must start at 1.
pub fn replay_to(dir: &Path, log: &Log, at: u64, progress: &Progress) -> Result<Rebuilt, Fatal> {
    let newest = load_newest_at_or_below(dir, at).map_err(|e| Fatal::usage(e.to_string()))?;
    for skipped in &newest.skipped {
        eprintln!("wal-dump: warning: {skipped}; trying an older snapshot");
    }
    let (mut state, snapshot) = match newest.loaded {
        Some(l) => {
            let lsn = l.header.lsn;
            (l.state, Some((l.path, lsn)))
        }
        None => (State::new(), None),
    };
    progress.next_pass(&format!("replaying to {at}"), log.frame_bytes());
    let mut counter = progress.counter();
    for located in log.records() {
        let frame = located?.record;
        counter.add(frame.header.padded_len() as u64);
        if frame.lsn <= state.applied_lsn() {
            continue;
        }
        if frame.lsn != state.applied_lsn() + 1 {
            let message = match &snapshot {
                Some((path, lsn)) => format!(
                    "the log continues at LSN {} after the snapshot {} (LSN {lsn}); \
                     rebuilding the state at LSN {at} needs it from LSN {}",
                    frame.lsn,
                    path.display(),
                    lsn + 1
                ),
                None => format!(
                    "the log starts at LSN {}; rebuilding the state at LSN {at} needs it \
                     from LSN 1, as there is no snapshot at or below {at}",
                    frame.lsn
                ),
            };
            return Err(Fatal {
                code: exit::CORRUPT,
                message,
            });
        }
        if frame.lsn > at {
            break;
        }
        apply_frame(&mut state, &frame).map_err(|e| Fatal {
            code: exit::CORRUPT,
            message: format!("replay failed: {e}"),
        })?;
    }
    if state.applied_lsn() < at {
        let why = match &log.stop {
            Some(stop) => stop.describe(),
            None => "the log is clean".into(),
        };
        return Err(Fatal::usage(format!(
            "LSN {at} is past the end of the readable log (last LSN {}); {why}",
            state.applied_lsn()
        )));
    }
    Ok(Rebuilt { state, snapshot })
}

/// The JSON form of a state at `lsn`: the config with its serial, the
/// lock table (lock name to holder session to mode and fencing token), and
/// the snapshot replay started from (`null`: from LSN 1).
pub fn state_json(rebuilt: &Rebuilt, lsn: u64) -> Value {
    let state = &rebuilt.state;
    let mut locks = Map::new();
    for (name, holders) in state.locks().held() {
        let mut h = Map::new();
        for (session, hold) in holders {
            h.insert(
                session.to_string(),
                json!({"mode": mode_name(hold.mode), "token": hold.token}),
            );
        }
        locks.insert(name.to_string(), Value::Object(h));
    }
    let config = state.config();
    json!({
        "schema": SCHEMA,
        "lsn": lsn,
        "epoch": state.epoch(),
        "config": {
            "serial": config.serial(),
            "lsn": config.lsn(),
            "doc": config.doc(),
        },
        "locks": locks,
        "snapshot": rebuilt.snapshot.as_ref().map(|(path, lsn)| json!({
            "path": path.display().to_string(),
            "lsn": lsn,
        })),
    })
}
