//! Replay: turning the recovered log back into a [`State`]. Pure over the
//! frames it is given (no actix, no I/O of its own), so the daemon, tests and
//! `wal-dump` replay alike.
//!
//! A frame's kind says which record it holds (`state::record::kind`). A kind
//! this build does not know is refused unless the writer marked it
//! `KIND_SKIPPABLE`; a skipped frame still uses its LSN. Every error names
//! the LSN, so an operator can find the frame with `wal-dump`.

use std::fmt;

use crate::codec::{self, CodecError};
use crate::state::record::kind;
use crate::state::{Record, State, StateError};
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
    let mut state = State::new();
    let mut stats = ReplayStats::default();
    for frame in recovered.records() {
        let frame = frame.map_err(ReplayError::Wal)?;
        let before = state.applied_lsn();
        apply_frame(&mut state, &frame)?;
        debug_assert_eq!(state.applied_lsn(), before + 1);
        stats.records += 1;
        stats.skipped += u64::from(kind::name(frame.kind).is_none());
    }
    Ok((state, stats))
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
