//! `wal-dump state`: the config and lock table as of an LSN, rebuilt by
//! replaying the log through `State::apply` exactly as the daemon does at
//! start-up (so the two cannot disagree about what a record means).

use std::path::Path;

use serde_json::{json, Map, Value};
use wconf::replay::apply_frame;
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
        (Some(at), _) => state_json(&replay_to(&log, at, &progress)?, at),
        (None, Some([a, b])) => {
            let before = state_json(&replay_to(&log, *a, &progress)?, *a);
            let after = state_json(&replay_to(&log, *b, &progress)?, *b);
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

/// Replays records `1..=at` into a fresh state, counting the frame bytes
/// on `progress`. Without snapshots the log must still start at LSN 1.
pub fn replay_to(log: &Log, at: u64, progress: &Progress) -> Result<State, Fatal> {
    let mut state = State::new();
    progress.next_pass(&format!("replaying to {at}"), log.frame_bytes());
    let mut counter = progress.counter();
    for located in log.records() {
        let frame = located?.record;
        counter.add(frame.header.padded_len() as u64);
        if state.applied_lsn() == 0 && frame.lsn != 1 {
            return Err(Fatal {
                code: exit::CORRUPT,
                message: format!(
                    "the log starts at LSN {}; rebuilding state needs it from LSN 1 \
                     (replay from a snapshot is not supported yet)",
                    frame.lsn
                ),
            });
        }
        if frame.lsn > at {
            return Ok(state);
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
    Ok(state)
}

/// The JSON form of a state at `lsn`: the config with its serial, and the
/// lock table (lock name to holder session to mode and fencing token).
pub fn state_json(state: &State, lsn: u64) -> Value {
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
    })
}
