//! Replay: turning the recovered log back into a [`State`]. Pure over the
//! frames it is given (no actix, no I/O of its own), so the daemon, tests and
//! `wal-dump` replay alike.
//!
//! A frame's kind says which record it holds (`state::record::kind`). A kind
//! this build does not know is refused unless the writer marked it
//! `KIND_SKIPPABLE`; a skipped frame still uses its LSN. Every error names
//! the LSN, so an operator can find the frame with `wal-dump`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::codec::{self, CodecError};
use crate::failpoints::failpoint;
use crate::snapshot::{self, SnapshotError};
use crate::state::record::kind;
use crate::state::{Record, State, StateError};
use crate::wal::storage::Storage;
use crate::wal::{self, Recovered, WalError, KIND_SKIPPABLE};

#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReplayError {
    /// The WAL could not hand over a frame.
    Wal(WalError),
    UnknownKind {
        lsn: u64,
        kind: u16,
    },
    Decode {
        lsn: u64,
        kind: u16,
        error: CodecError,
    },
    /// The payload decoded to a record of another kind than the frame says.
    KindMismatch {
        lsn: u64,
        frame_kind: u16,
        record_kind: u16,
    },
    /// The record decoded but the state refuses it: the log contradicts
    /// itself (or this build's limits are lower than the writer's).
    Apply {
        lsn: u64,
        error: StateError,
    },
    /// The log starts after LSN 1 and no snapshot that loads covers the
    /// records before it (segments were collected after a snapshot that is
    /// now missing or corrupt). `skipped` says why each snapshot failed.
    LogStartUncovered {
        first_lsn: u64,
        snapshot_lsn: u64,
        skipped: Vec<String>,
    },
    /// The snapshot used is at an LSN the log does not reach: the log lost
    /// records that were durable when the snapshot was written (a deleted
    /// or truncated last segment).
    SnapshotAheadOfLog {
        snapshot: PathBuf,
        snapshot_lsn: u64,
        log_last_lsn: u64,
    },
    /// The snapshot directory could not be read.
    Snapshot(SnapshotError),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Wal(e) => write!(f, "{e}"),
            ReplayError::UnknownKind { lsn, kind } => write!(
                f,
                "record at LSN {lsn} has kind {kind:#06x}, which this build does not know \
                 and which is not marked skippable"
            ),
            ReplayError::Decode { lsn, kind, error } => {
                write!(
                    f,
                    "record at LSN {lsn} (kind {kind}) does not decode: {error}"
                )
            }
            ReplayError::KindMismatch {
                lsn,
                frame_kind,
                record_kind,
            } => write!(
                f,
                "record at LSN {lsn} is framed as kind {frame_kind} but holds kind {record_kind}"
            ),
            ReplayError::Apply { lsn, error } => {
                write!(f, "record at LSN {lsn} cannot be replayed: {error}")
            }
            ReplayError::LogStartUncovered {
                first_lsn,
                snapshot_lsn,
                skipped,
            } => {
                write!(
                    f,
                    "the log starts at LSN {first_lsn}, but no snapshot that loads covers the \
                     records before it (the newest usable snapshot is at LSN {snapshot_lsn}"
                )?;
                if skipped.is_empty() {
                    write!(f, "; there is none)")
                } else {
                    write!(f, "; skipped: {})", skipped.join("; "))
                }
            }
            ReplayError::SnapshotAheadOfLog {
                snapshot,
                snapshot_lsn,
                log_last_lsn,
            } => write!(
                f,
                "snapshot {} is at LSN {snapshot_lsn} but the log ends at LSN {log_last_lsn}: \
                 records that were durable are missing from the log (a deleted or truncated \
                 last segment?)",
                snapshot.display()
            ),
            ReplayError::Snapshot(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Decodes one frame. `Ok(None)`: an unknown kind marked skippable.
pub fn decode_frame(
    lsn: u64,
    frame_kind: u16,
    payload: &[u8],
) -> Result<Option<Record>, ReplayError> {
    if kind::name(frame_kind).is_none() {
        if frame_kind & KIND_SKIPPABLE != 0 {
            return Ok(None);
        }
        return Err(ReplayError::UnknownKind {
            lsn,
            kind: frame_kind,
        });
    }
    let record: Record = codec::decode(payload).map_err(|error| ReplayError::Decode {
        lsn,
        kind: frame_kind,
        error,
    })?;
    if record.kind() != frame_kind {
        return Err(ReplayError::KindMismatch {
            lsn,
            frame_kind,
            record_kind: record.kind(),
        });
    }
    Ok(Some(record))
}

/// Applies one frame to `state`: decoded and applied, or skipped.
pub fn apply_frame(state: &mut State, frame: &wal::reader::Record<'_>) -> Result<(), ReplayError> {
    let lsn = frame.lsn;
    let applied = match decode_frame(lsn, frame.kind, frame.payload)? {
        Some(record) => state.apply(lsn, &record).map(drop),
        None => state.skip(lsn),
    };
    applied.map_err(|error| ReplayError::Apply { lsn, error })
}

/// What replay did, for the start-up log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub skipped: u64,
}

/// Replays every recovered record into a fresh state.
pub fn replay(recovered: &Recovered) -> Result<(State, ReplayStats), ReplayError> {
    replay_onto(recovered, State::new(), &Progress::default())
}

/// Replays the recovered records after `state`'s LSN onto `state` (a fresh
/// state, or one loaded from a snapshot), publishing progress as it goes.
pub fn replay_onto(
    recovered: &Recovered,
    mut state: State,
    progress: &Progress,
) -> Result<(State, ReplayStats), ReplayError> {
    let mut stats = ReplayStats::default();
    let from = state.applied_lsn();
    let records = recovered.report.last_lsn.saturating_sub(from);
    progress.start_replay(records, recovered.report.bytes);
    for frame in recovered.records_after(from) {
        let frame = frame.map_err(ReplayError::Wal)?;
        failpoint!("replay::record::before");
        let before = state.applied_lsn();
        apply_frame(&mut state, &frame)?;
        debug_assert_eq!(state.applied_lsn(), before + 1);
        stats.records += 1;
        stats.skipped += u64::from(kind::name(frame.kind).is_none());
        progress.replayed(frame.header.padded_len() as u64);
    }
    progress.finish_replay();
    Ok((state, stats))
}

/// Where start-up is, for `/healthz` and the log: shared between the
/// recovering thread and whoever reports on it. All counters are atomics;
/// reading them never waits for recovery.
#[derive(Debug)]
pub struct Progress {
    phase: AtomicU8,
    records_done: AtomicU64,
    records_total: AtomicU64,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last progress log line.
    logged_ms: AtomicU64,
}

/// The steps of start-up, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Validating the log's segments (and cutting a torn tail).
    OpeningLog,
    LoadingSnapshot,
    Replaying,
    /// Writing the new epoch and starting the actors.
    Starting,
    Ready,
}

const PHASES: [Phase; 5] = [
    Phase::OpeningLog,
    Phase::LoadingSnapshot,
    Phase::Replaying,
    Phase::Starting,
    Phase::Ready,
];

/// How often replay logs its progress.
pub const PROGRESS_LOG_INTERVAL_MS: u64 = 1_000;
/// Replay looks at the clock once per this many records.
const PROGRESS_CLOCK_RECORDS: u64 = 4_096;

/// What `/healthz` shows while recovering.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProgressView {
    pub phase: Phase,
    pub records_replayed: u64,
    pub records_total: u64,
    pub bytes_replayed: u64,
    pub bytes_total: u64,
    pub percent: f64,
    pub elapsed_ms: u64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            phase: AtomicU8::new(0),
            records_done: AtomicU64::new(0),
            records_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            started: Instant::now(),
            logged_ms: AtomicU64::new(0),
        }
    }
}

impl Progress {
    pub fn set_phase(&self, phase: Phase) {
        let i = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(i as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        PHASES[usize::from(self.phase.load(Ordering::Acquire)).min(PHASES.len() - 1)]
    }

    fn start_replay(&self, records: u64, bytes: u64) {
        self.records_total.store(records, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.records_done.store(0, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
        self.set_phase(Phase::Replaying);
    }

    fn replayed(&self, bytes: u64) {
        let done = self.records_done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if done.is_multiple_of(PROGRESS_CLOCK_RECORDS) {
            let now_ms = self.started.elapsed().as_millis() as u64;
            let last = self.logged_ms.load(Ordering::Relaxed);
            if now_ms >= last + PROGRESS_LOG_INTERVAL_MS {
                self.logged_ms.store(now_ms, Ordering::Relaxed);
                let v = self.view();
                tracing::info!(
                    records = v.records_replayed,
                    of = v.records_total,
                    mb = v.bytes_replayed as f64 / 1e6,
                    percent = v.percent,
                    "replaying the log"
                );
            }
        }
    }

    fn finish_replay(&self) {
        self.set_phase(Phase::Starting);
    }

    /// Time since this start-up began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn view(&self) -> ProgressView {
        let records_replayed = self.records_done.load(Ordering::Relaxed);
        let records_total = self.records_total.load(Ordering::Relaxed);
        // One decimal: enough to see it move, short enough to read.
        let percent = match records_total {
            0 => 0.0,
            n => (1000.0 * records_replayed as f64 / n as f64).round() / 10.0,
        };
        ProgressView {
            phase: self.phase(),
            records_replayed,
            records_total,
            bytes_replayed: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            percent,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// What recovery started from, for the start-up log and metrics.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The snapshot loaded, its LSN, size and load time.
    pub snapshot: Option<(PathBuf, u64, u64, Duration)>,
    /// Newer snapshots that did not load, and why.
    pub skipped_snapshots: Vec<String>,
    pub replay: ReplayStats,
    pub replay_elapsed: Duration,
    /// Loading the snapshot (and trying newer ones that failed) plus replay.
    pub elapsed: Duration,
}

/// Recovery proper, after `Wal::open`: the newest snapshot that loads plus
/// the records after it. Refuses a log that starts after LSN 1 unless the
/// snapshot covers everything before that start, and a snapshot the log
/// does not reach. Corrupt newer snapshots are skipped with a warning (the
/// older one's segments are kept for this: see `snapshot::collect`).
pub fn recover_state(
    storage: &dyn Storage,
    dir: &Path,
    recovered: &Recovered,
    progress: &Progress,
) -> Result<(State, Recovery), ReplayError> {
    let began = Instant::now();
    progress.set_phase(Phase::LoadingSnapshot);
    snapshot::remove_temp_files(storage, dir).map_err(ReplayError::Snapshot)?;
    failpoint!("replay::snapshot_load::before");
    let newest = snapshot::load_newest_at_or_below_with(storage, dir, u64::MAX)
        .map_err(ReplayError::Snapshot)?;
    failpoint!("replay::snapshot_load::after");
    let skipped: Vec<String> = newest.skipped.iter().map(ToString::to_string).collect();
    let report = &recovered.report;
    let mut recovery = Recovery {
        skipped_snapshots: skipped.clone(),
        ..Recovery::default()
    };
    let state = match newest.loaded {
        Some(loaded) => {
            let lsn = loaded.header.lsn;
            if lsn > report.last_lsn {
                return Err(ReplayError::SnapshotAheadOfLog {
                    snapshot: loaded.path,
                    snapshot_lsn: lsn,
                    log_last_lsn: report.last_lsn,
                });
            }
            if !skipped.is_empty() {
                tracing::warn!(
                    path = %loaded.path.display(),
                    lsn,
                    skipped = skipped.len(),
                    "fell back to an older snapshot; replay is longer"
                );
            }
            tracing::info!(
                path = %loaded.path.display(),
                lsn,
                bytes = loaded.bytes,
                ms = loaded.elapsed.as_millis() as u64,
                "loaded snapshot"
            );
            recovery.snapshot = Some((loaded.path, lsn, loaded.bytes, loaded.elapsed));
            loaded.state
        }
        None => State::new(),
    };
    if report.first_lsn > state.applied_lsn() + 1 {
        return Err(ReplayError::LogStartUncovered {
            first_lsn: report.first_lsn,
            snapshot_lsn: state.applied_lsn(),
            skipped,
        });
    }
    let started = Instant::now();
    let (state, stats) = replay_onto(recovered, state, progress)?;
    recovery.replay = stats;
    recovery.replay_elapsed = started.elapsed();
    recovery.elapsed = began.elapsed();
    Ok((state, recovery))
}

/// Encodes a record as its frame: `(kind, payload)`.
pub fn encode_record(record: &Record) -> Result<(u16, Vec<u8>), CodecError> {
    Ok((record.kind(), codec::encode(record)?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::{LockMode, LockRequest};
    use crate::state::{SessionId, CONFIG_LOCK};
    use crate::wal::storage::MemStorage;
    use crate::wal::{Wal, WalOptions};

    fn open_mem(mem: &MemStorage) -> (Wal, Recovered) {
        Wal::open_with(
            Arc::new(mem.clone()),
            std::path::Path::new("/wal"),
            WalOptions::default(),
        )
        .unwrap()
    }

    fn records() -> Vec<Record> {
        let s = SessionId(7);
        vec![
            Record::Epoch {
                epoch: 1,
                started_unix_ms: 5,
            },
            Record::SessionOpen {
                session: s,
                name: None,
                ttl_ms: 10_000,
            },
            Record::Grant {
                session: s,
                locks: vec![LockRequest::new(CONFIG_LOCK, LockMode::Exclusive)],
                token: 1,
                request_id: Some("g".into()),
            },
            Record::ConfigWrite {
                session: Some(s),
                patch_json: r#"[{"op":"add","path":"/a","value":1}]"#.into(),
                release_config: true,
                request_id: Some("w".into()),
            },
        ]
    }

    #[test]
    fn replay_of_a_written_log_equals_the_live_state() {
        // Invariant: records written under their kinds replay to the state
        // that applying them live produced.
        let mem = MemStorage::new();
        let (wal, _) = open_mem(&mem);
        let mut live = State::new();
        for r in records() {
            let (kind, payload) = encode_record(&r).unwrap();
            let lsn = wal.append(kind, payload).unwrap().wait().unwrap();
            live.apply(lsn, &r).unwrap();
        }
        drop(wal);
        let (_, recovered) = open_mem(&mem);
        let (state, stats) = replay(&recovered).unwrap();
        assert_eq!(
            stats,
            ReplayStats {
                records: 4,
                skipped: 0
            }
        );
        assert_eq!(state, live);
        assert_eq!(state.config().serial(), 1);
    }

    #[test]
    fn unknown_kinds_are_refused_unless_skippable_and_errors_name_the_lsn() {
        // Invariant: an unknown kind stops replay (naming the LSN) unless it
        // is marked skippable; a skipped frame still uses its LSN.
        let mem = MemStorage::new();
        let (wal, _) = open_mem(&mem);
        let first = &records()[0];
        let (kind, payload) = encode_record(first).unwrap();
        wal.append(kind, payload).unwrap().wait().unwrap();
        wal.append(77 | KIND_SKIPPABLE, b"future".to_vec())
            .unwrap()
            .wait()
            .unwrap();
        let (kind, payload) = encode_record(&records()[1]).unwrap();
        wal.append(kind, payload).unwrap().wait().unwrap();
        drop(wal);
        let (wal, recovered) = open_mem(&mem);
        let (state, stats) = replay(&recovered).unwrap();
        assert_eq!(
            stats,
            ReplayStats {
                records: 3,
                skipped: 1
            }
        );
        assert_eq!(state.applied_lsn(), 3);
        assert_eq!(state.sessions().len(), 1);

        wal.append(77, b"future".to_vec()).unwrap().wait().unwrap();
        drop(wal);
        let (_, recovered) = open_mem(&mem);
        let err = replay(&recovered).unwrap_err();
        assert!(
            matches!(err, ReplayError::UnknownKind { lsn: 4, kind: 77 }),
            "{err}"
        );
        assert!(err.to_string().contains("LSN 4"), "{err}");
    }

    #[test]
    fn bad_payloads_and_mislabelled_frames_name_the_lsn() {
        // Invariant: a payload that does not decode, or decodes to another
        // kind than its frame says, is an error naming the LSN, not a panic.
        let err = decode_frame(9, kind::GRANT, b"\xff\xff").unwrap_err();
        assert!(matches!(err, ReplayError::Decode { lsn: 9, .. }), "{err}");
        let (_, payload) = encode_record(&records()[0]).unwrap();
        let err = decode_frame(10, kind::GRANT, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                ReplayError::KindMismatch {
                    lsn: 10,
                    frame_kind: kind::GRANT,
                    record_kind: kind::EPOCH
                }
            ),
            "{err}"
        );
    }
}
