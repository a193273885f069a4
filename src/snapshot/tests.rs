//! Snapshots on `MemStorage`: round trips, fallback, refusals, and a crash
//! at every step of writing a snapshot and of collecting after it.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::replay::{encode_record, recover_state, Progress, ReplayError};
use crate::state::{LockMode, LockRequest, Record, SessionId};
use crate::wal::storage::{CrashMode, Fault, MemStorage};
use crate::wal::{Wal, WalOptions};

const DIR: &str = "/data";

fn options() -> WalOptions {
    // Small segments, so a few dozen records span many of them and
    // collection has something to delete.
    WalOptions {
        segment_bytes: 4096,
        record_bytes_max: 1024,
        batch_bytes_max: 1024,
        queue_bytes_max: 1 << 20,
        ..WalOptions::default()
    }
}

fn dir() -> &'static Path {
    Path::new(DIR)
}

/// A log written by the real writer, and the state its records give.
struct Scenario {
    mem: MemStorage,
    wal: Wal,
    live: State,
    n: u64,
}

impl Scenario {
    fn new() -> Scenario {
        let mem = MemStorage::new();
        let (wal, _) = Wal::open_with(Arc::new(mem.clone()), dir(), options()).unwrap();
        let mut sc = Scenario {
            mem,
            wal,
            live: State::new(),
            n: 0,
        };
        sc.append(Record::Epoch {
            epoch: 1,
            started_unix_ms: 1,
        });
        sc.append(Record::SessionOpen {
            session: SessionId(1),
            name: Some("s".into()),
            ttl_ms: 10_000,
        });
        sc
    }

    /// Applies and appends one record, and waits until it is durable: it is
    /// acknowledged, so every recovery from here on must keep it.
    fn append(&mut self, record: Record) {
        let lsn = self.live.next_lsn();
        self.live.apply(lsn, &record).unwrap();
        let (kind, payload) = encode_record(&record).unwrap();
        let got = self.wal.append(kind, payload).unwrap().wait().unwrap();
        assert_eq!(got, lsn);
    }

    /// `count` more records: transactions (config and dedup) and grants
    /// (locks and tokens).
    fn fill(&mut self, count: u64) {
        for _ in 0..count {
            self.n += 1;
            let i = self.n;
            let record = if i.is_multiple_of(3) {
                Record::Grant {
                    session: SessionId(1),
                    locks: vec![LockRequest::new(format!("lock{i}"), LockMode::Shared)],
                    token: self.live.next_token(),
                    request_id: Some(format!("g{i}")),
                }
            } else {
                Record::ConfigWrite {
                    session: None,
                    patch_json: format!(
                        r#"[{{"op":"add","path":"/k{i}","value":"{}"}}]"#,
                        "v".repeat(200)
                    ),
                    release_config: false,
                    request_id: Some(format!("t{i}")),
                }
            };
            self.append(record);
        }
    }

    /// `rounds` times: 30 records, then a snapshot; then 30 more records.
    fn with_snapshots(rounds: usize) -> Scenario {
        let mut sc = Scenario::new();
        for _ in 0..rounds {
            sc.fill(30);
            sc.snapshot().unwrap();
        }
        sc.fill(30);
        sc
    }

    fn snapshot(&self) -> Result<(Written, Collected), SnapshotError> {
        let storage = self.wal.storage();
        let written = write(storage.as_ref(), dir(), &self.live, 7)?;
        Ok((written, collect(storage.as_ref(), dir())?))
    }
}

/// What the daemon recovers from `mem` (a crashed image): `Wal::open`,
/// then the newest snapshot that loads plus the log after it.
fn recover(mem: &MemStorage) -> Result<State, ReplayError> {
    let (wal, recovered) = Wal::open_with(Arc::new(mem.clone()), dir(), options()).unwrap();
    let storage = wal.storage();
    recover_state(storage.as_ref(), dir(), &recovered, &Progress::default()).map(|(s, _)| s)
}

fn segments(mem: &MemStorage) -> usize {
    use crate::wal::storage::Storage;
    let names = mem.list(dir()).unwrap();
    names
        .iter()
        .filter(|n| crate::wal::segment::parse_segment_name(n).is_some())
        .count()
}

#[test]
fn written_snapshot_loads_back_equal_and_lists_by_lsn() {
    // Invariant: load(write(state)) == state, at the same LSN, and list()
    // names it.
    let mut sc = Scenario::new();
    sc.fill(10);
    let (written, _) = sc.snapshot().unwrap();
    assert_eq!(written.lsn, sc.live.applied_lsn());
    let loaded = load_with(&sc.mem, &written.path).unwrap();
    assert_eq!(loaded.state, sc.live);
    assert_eq!(loaded.header.lsn, written.lsn);
    assert_eq!(loaded.bytes, written.bytes);
    let listed = list_with(&sc.mem, dir()).unwrap();
    assert_eq!(
        listed,
        vec![SnapshotFile {
            lsn: written.lsn,
            path: written.path
        }]
    );
}

#[test]
fn a_body_of_many_chunks_streams_the_exact_encoding() {
    // Invariant: the body streamed chunk by chunk is byte for byte what
    // `codec::encode` gives, with its length and CRC in the header, also
    // when it spans several chunks and ends inside one.
    use crate::wal::storage::Storage;
    let mut sc = Scenario::new();
    sc.fill(3 * WRITE_CHUNK_BYTES as u64 / 200 + 7);
    let (written, _) = sc.snapshot().unwrap();
    let expected = codec::encode(&sc.live).unwrap();
    assert!(expected.len() > 2 * WRITE_CHUNK_BYTES);
    assert_ne!(expected.len() % WRITE_CHUNK_BYTES, 0);
    let view = sc.mem.read(&written.path).unwrap();
    let header = SnapshotHeader::decode(&view).unwrap();
    assert_eq!(header.body_len, expected.len() as u64);
    assert_eq!(header.body_crc, crc32fast::hash(&expected));
    assert_eq!(header.body(&view).unwrap(), &expected[..]);
    assert_eq!(written.bytes, (SNAPSHOT_HEADER_LEN + expected.len()) as u64);
    assert_eq!(load_with(&sc.mem, &written.path).unwrap().state, sc.live);
}

#[test]
fn recovery_is_snapshot_plus_tail_and_collection_keeps_the_fallback() {
    // Invariant: after snapshots and collection, recovery gives the state of
    // every acknowledged record; two snapshots are kept, and segments back
    // to the older one's LSN; older segments are gone.
    let mut sc = Scenario::new();
    sc.fill(40);
    let (first, c1) = sc.snapshot().unwrap();
    assert!(
        c1.segments.is_empty(),
        "one snapshot: the fallback is the whole log"
    );
    sc.fill(40);
    let before = segments(&sc.mem);
    let (second, c2) = sc.snapshot().unwrap();
    assert_eq!(c2.segments_through_lsn, first.lsn);
    assert!(
        !c2.segments.is_empty(),
        "segments below the older snapshot go"
    );
    assert_eq!(segments(&sc.mem), before - c2.segments.len());
    sc.fill(40);
    let (third, c3) = sc.snapshot().unwrap();
    assert_eq!(c3.snapshots, vec![first.path.clone()]);
    assert_eq!(c3.segments_through_lsn, second.lsn);
    let kept: Vec<u64> = list_with(&sc.mem, dir())
        .unwrap()
        .iter()
        .map(|f| f.lsn)
        .collect();
    assert_eq!(kept, vec![second.lsn, third.lsn]);
    sc.fill(5);
    assert_eq!(
        recover(&sc.mem.crash(CrashMode::DropUnsynced)).unwrap(),
        sc.live
    );
}

/// Flips one byte in the middle of the file at `path`.
fn corrupt(mem: &MemStorage, path: &Path) {
    use crate::wal::storage::Storage;
    let len = mem.read(path).unwrap().len() as u64;
    let mut f = mem.open_write(path).unwrap();
    f.write_all_at(&[0xAA], len / 2).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_older_one() {
    // Invariant: with the newest snapshot damaged, recovery uses the older
    // one and a longer replay, and still has every acknowledged record.
    let mut sc = Scenario::with_snapshots(2);
    let (newest, _) = sc.snapshot().unwrap();
    sc.fill(3);
    corrupt(&sc.mem, &newest.path);
    let newest_loaded = load_newest_at_or_below_with(&sc.mem, dir(), u64::MAX).unwrap();
    assert_eq!(newest_loaded.skipped.len(), 1);
    assert!(newest_loaded.loaded.unwrap().header.lsn < newest.lsn);
    assert_eq!(recover(&sc.mem).unwrap(), sc.live);
}

#[test]
fn nothing_valid_and_a_log_not_starting_at_1_is_refused() {
    // Invariant: when every snapshot fails and the log's start was
    // collected, recovery refuses (naming why) instead of replaying a
    // suffix onto an empty state.
    let sc = Scenario::with_snapshots(2);
    for file in list_with(&sc.mem, dir()).unwrap() {
        corrupt(&sc.mem, &file.path);
    }
    let err = recover(&sc.mem).unwrap_err();
    assert!(
        matches!(&err, ReplayError::LogStartUncovered { skipped, .. } if skipped.len() == 2),
        "{err}"
    );
}

#[test]
fn a_snapshot_ahead_of_the_log_is_refused() {
    // Invariant: a log that ends before the snapshot's LSN lost durable
    // records; recovery refuses rather than serving the snapshot.
    let mut sc = Scenario::new();
    sc.fill(10);
    let (written, _) = sc.snapshot().unwrap();
    drop(sc.wal);
    let other = MemStorage::new();
    {
        let (wal, _) = Wal::open_with(Arc::new(other.clone()), dir(), options()).unwrap();
        let (kind, payload) = encode_record(&Record::Epoch {
            epoch: 1,
            started_unix_ms: 1,
        })
        .unwrap();
        wal.append(kind, payload).unwrap().wait().unwrap();
    }
    // The same snapshot beside a log of one record.
    use crate::wal::storage::Storage;
    let bytes = sc.mem.read(&written.path).unwrap().to_vec();
    let mut f = other.create_new(&written.path).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    f.sync_all().unwrap();
    other.sync_dir(dir()).unwrap();
    let err = recover(&other).unwrap_err();
    assert!(
        matches!(
            err,
            ReplayError::SnapshotAheadOfLog {
                log_last_lsn: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_crash_at_every_step_of_a_snapshot_and_its_collection_keeps_everything() {
    // Invariant: whatever step of writing the third snapshot (create, each
    // write, fsync, rename, directory fsync) or of the collection after it
    // (each unlink and its directory fsync) a power loss interrupts, in
    // every crash mode, recovery has every acknowledged record.
    let three_snapshots = |fault: Option<(Fault, u64)>| {
        let sc = Scenario::with_snapshots(2);
        if let Some((fault, pass)) = fault {
            sc.mem.inject(fault, pass);
        }
        let result = sc.snapshot();
        (sc, result)
    };
    let (_, clean) = three_snapshots(None);
    let (_, collected) = clean.unwrap();
    let unlinks = (collected.snapshots.len() + collected.segments.len()) as u64;
    assert!(
        unlinks >= 2,
        "the third snapshot collects a snapshot and segments"
    );
    // The header and the body are two writes; one fsync; one directory
    // fsync after the rename and one after each unlink.
    let faults = [
        (Fault::WriteIo, 2),
        (Fault::SyncIo, 1),
        (Fault::SyncDirIo, 1 + unlinks),
    ];
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::KeepUnsyncedWrites,
        CrashMode::Torn { seed: 1 },
        CrashMode::Torn { seed: 2 },
    ];
    let mut fired = 0usize;
    for (fault, passes) in faults {
        for pass in 0..passes {
            let (sc, result) = three_snapshots(Some((fault, pass)));
            assert!(result.is_err(), "{fault:?} after {pass} never fired");
            fired += 1;
            for mode in modes {
                let state = recover(&sc.mem.crash(mode))
                    .unwrap_or_else(|e| panic!("{fault:?} after {pass}, {mode:?}: {e}"));
                assert_eq!(state, sc.live, "{fault:?} after {pass}, {mode:?}");
            }
        }
    }
    assert_eq!(fired as u64, 2 + 1 + 1 + unlinks);
}
