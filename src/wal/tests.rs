//! Tests of the writer and recovery together. Every test that does not need
//! a specific backend runs on both: the real file system and the memory
//! backend that keeps written and durable images apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{frame_bytes, SEGMENT_HEADER_LEN};
use super::segment::segment_name;
use super::storage::{CrashMode, Fault, MemStorage, StdStorage, Storage};
use super::*;

enum Backend {
    Mem(MemStorage),
    Std(tempfile::TempDir),
}

impl Backend {
    fn all() -> Vec<Backend> {
        vec![
            Backend::Mem(MemStorage::new()),
            Backend::Std(tempfile::tempdir().unwrap()),
        ]
    }
    fn storage(&self) -> Arc<dyn Storage> {
        match self {
            Backend::Mem(m) => Arc::new(m.clone()),
            Backend::Std(_) => Arc::new(StdStorage),
        }
    }
    fn dir(&self) -> PathBuf {
        match self {
            Backend::Mem(_) => PathBuf::from("/wal"),
            Backend::Std(t) => t.path().join("wal"),
        }
    }
    fn open(&self, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        Wal::open_with(self.storage(), &self.dir(), options)
    }
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        record_bytes_max: 1024,
        batch_bytes_max: 1024,
        queue_len_max: 1024,
        queue_bytes_max: 1 << 20,
        ..WalOptions::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

fn records(r: &Recovered) -> Vec<(u64, Vec<u8>)> {
    r.records()
        .map(|rec| rec.map(|rec| (rec.lsn, rec.payload.to_vec())).unwrap())
        .collect()
}

fn append_all(wal: &Wal, lsns: std::ops::RangeInclusive<u64>) {
    for i in lsns {
        assert_eq!(wal.append(1, payload(i)).unwrap().wait().unwrap(), i);
    }
}

fn mem_open(mem: &MemStorage, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
    Wal::open_with(Arc::new(mem.clone()), Path::new("/wal"), options)
}

#[test]
fn reopen_returns_every_record_in_order_across_rolls() {
    // Invariant: what was acknowledged comes back, in LSN order, through
    // segment rolls and a reopen, and appends continue at the next LSN.
    for backend in Backend::all() {
        let (wal, rec) = backend.open(small()).unwrap();
        assert_eq!(rec.report.records, 0);
        append_all(&wal, 1..=200);
        wal.close().unwrap();
        drop(wal);
        let (wal, rec) = backend.open(small()).unwrap();
        let got = records(&rec);
        assert_eq!(got.len(), 200);
        for (i, (lsn, p)) in got.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1);
            assert_eq!(*p, payload(*lsn));
        }
        assert!(
            rec.report.segments > 5,
            "expected rolls, got {} segments",
            rec.report.segments
        );
        assert!(rec.report.truncation.is_none());
        append_all(&wal, 201..=210);
        drop(wal);
        let (_wal, rec) = backend.open(small()).unwrap();
        assert_eq!(records(&rec).len(), 210);
    }
}

#[test]
fn group_commit_one_sync_serves_everything_queued_behind_it() {
    // Invariant: appends that queue while a sync runs go out as one batch
    // with one sync.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    // The first append creates the segment, which syncs on its own.
    wal.append(1, b"warm-up".to_vec()).unwrap().wait().unwrap();
    let pause = mem.pause_syncs();
    let first = wal.append(1, b"first".to_vec()).unwrap();
    mem.wait_for_paused_syncs(1);
    let queued: Vec<_> = (0..100)
        .map(|i| wal.append(1, payload(i)).unwrap())
        .collect();
    drop(pause);
    first.wait().unwrap();
    for a in queued {
        a.wait().unwrap();
    }
    let t = wal.telemetry();
    assert_eq!(t.syncs, 3, "{t:?}");
    assert_eq!(t.records_per_sync_max, 100, "{t:?}");
    assert_eq!(t.records, 102);
}

#[test]
fn an_append_resolves_only_after_the_sync_that_covers_it() {
    // Invariant: G1 at the WAL level: while the covering sync has not
    // returned, the append is unresolved and a crash may drop it.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    wal.append(1, b"durable".to_vec()).unwrap().wait().unwrap();
    let pause = mem.pause_syncs();
    let mut pending = wal.append(1, b"in flight".to_vec()).unwrap();
    mem.wait_for_paused_syncs(1);
    assert!(pending.try_wait().is_none());
    assert_eq!(wal.durable_lsn(), 1);
    let (_, crashed) = mem_open(&mem.crash(CrashMode::DropUnsynced), small()).unwrap();
    assert_eq!(records(&crashed), vec![(1, b"durable".to_vec())]);
    drop(pause);
    assert_eq!(pending.wait().unwrap(), 2);
    assert_eq!(wal.durable_lsn(), 2);
    let (_, crashed) = mem_open(&mem.crash(CrashMode::DropUnsynced), small()).unwrap();
    assert_eq!(records(&crashed).len(), 2);
}

#[test]
fn crash_with_a_batch_in_flight_recovers_a_prefix_with_every_acknowledged_record() {
    // Invariant: whatever a crash does to the one unsynced batch (dropped,
    // kept, torn at sectors with zeros or garbage), recovery returns a
    // prefix holding every acknowledged record, and recovering twice changes
    // nothing.
    for seed in 0..200u64 {
        let mem = MemStorage::new();
        let (wal, _) = mem_open(&mem, small()).unwrap();
        let acked = 1 + seed % 23;
        append_all(&wal, 1..=acked);
        let pause = mem.pause_syncs();
        let inflight: Vec<_> = (acked + 1..=acked + 1 + seed % 7)
            .map(|i| wal.append(1, payload(i)).unwrap())
            .collect();
        mem.wait_for_paused_syncs(1);
        let mode = match seed % 3 {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::KeepUnsyncedWrites,
            _ => CrashMode::Torn { seed },
        };
        let crashed = mem.crash(mode);
        drop(pause);
        drop(inflight);
        let (wal2, rec) = mem_open(&crashed, small()).unwrap();
        let got = records(&rec);
        assert!(
            got.len() as u64 >= acked,
            "seed {seed}: lost acknowledged records"
        );
        for (lsn, p) in &got {
            assert_eq!(*p, payload(*lsn), "seed {seed}");
        }
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=got.len() as u64).collect::<Vec<_>>()
        );
        drop(rec);
        drop(wal2);
        let (_, again) = mem_open(&crashed, small()).unwrap();
        assert_eq!(records(&again), got, "seed {seed}: second recovery differs");
        assert!(
            again.report.truncation.is_none(),
            "seed {seed}: second recovery cut again"
        );
    }
}

#[test]
fn fsync_error_fails_the_append_and_everything_after_without_retry() {
    // Invariant: fail-stop. The append whose sync failed errors, every later
    // append errors at once, and no sync is attempted again.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    append_all(&wal, 1..=3);
    mem.inject(Fault::SyncIo, 0);
    let err = wal.append(1, b"x".to_vec()).unwrap().wait().unwrap_err();
    assert!(
        matches!(&err, WalError::Poisoned { cause } if cause.contains("fdatasync")),
        "{err}"
    );
    let syncs = mem.sync_count();
    assert!(matches!(
        wal.append(1, b"y".to_vec()),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        wal.try_append(1, b"z".to_vec()),
        Err(WalError::Poisoned { .. })
    ));
    assert_eq!(mem.sync_count(), syncs, "a sync was retried");
    assert!(wal.poisoned().is_some());
    assert!(wal.close().is_err());
}

#[test]
fn write_and_preallocate_errors_are_fail_stop_too() {
    // Invariant: ENOSPC or EIO anywhere on the write path (batch write,
    // segment preallocation) poisons the log.
    for fault in [
        Fault::WriteNoSpace,
        Fault::WriteIo,
        Fault::AllocateNoSpace,
        Fault::SyncDirIo,
    ] {
        let mem = MemStorage::new();
        let (wal, _) = mem_open(&mem, small()).unwrap();
        append_all(&wal, 1..=2);
        mem.inject(fault, 0);
        // Enough records to force a segment roll, which preallocates and syncs the directory.
        let mut failed = None;
        for i in 3..100 {
            match wal.append(1, payload(i)).and_then(|a| a.wait()) {
                Ok(_) => continue,
                Err(e) => {
                    failed = Some(i);
                    assert!(matches!(e, WalError::Poisoned { .. }), "{fault:?}: {e}");
                    break;
                }
            }
        }
        let failed = failed.unwrap_or_else(|| panic!("{fault:?} never surfaced"));
        assert!(
            wal.append(1, vec![]).is_err(),
            "{fault:?}: append accepted after failure"
        );
        drop(wal);
        let (_, rec) = mem_open(&mem.crash(CrashMode::DropUnsynced), small()).unwrap();
        assert!(
            records(&rec).len() as u64 >= failed - 1,
            "{fault:?}: acknowledged records lost"
        );
    }
}

#[test]
fn zeros_are_written_ahead_of_the_tail_before_the_sync() {
    // Invariant: the writer keeps at least half of ZERO_AHEAD_BYTES written
    // with zeros past its last record, writes them before the sync that
    // covers the batch, and never past the segment's end.
    use super::storage::StorageOp;
    use super::writer::ZERO_AHEAD_BYTES;
    let mem = MemStorage::new();
    let segment = 3 * ZERO_AHEAD_BYTES / 2;
    let options = WalOptions {
        segment_bytes: segment,
        record_bytes_max: 4096,
        batch_bytes_max: 4096,
        ..WalOptions::default()
    };
    let (wal, _) = mem_open(&mem, options).unwrap();
    mem.record_ops();
    // 1,000-byte records: the first batch zeros 256 KiB, about the 130th
    // needs more, and the segment ends before the second window would.
    for i in 0..300u64 {
        wal.append(1, vec![i as u8 | 1; 1000])
            .unwrap()
            .wait()
            .unwrap();
    }
    let (mut end, mut zeroed_to, mut zero_writes) = (0u64, 0u64, 0);
    for op in mem.ops() {
        match op {
            StorageOp::Write { offset, data, .. } if data.iter().all(|b| *b == 0) => {
                assert_eq!(offset, zeroed_to.max(end), "zeros left a gap or overlap");
                zeroed_to = offset + data.len() as u64;
                assert!(zeroed_to <= segment, "zeros past the end");
                zero_writes += 1;
            }
            StorageOp::Write { offset, data, .. } => end = offset + data.len() as u64,
            // The new segment's header is synced before any record.
            StorageOp::Sync { .. } if end <= SEGMENT_HEADER_LEN as u64 => {}
            StorageOp::Sync { .. } => assert!(
                zeroed_to == segment || zeroed_to >= end + ZERO_AHEAD_BYTES / 2,
                "a sync of records to {end} with zeros only to {zeroed_to}"
            ),
            _ => {}
        }
    }
    assert_eq!(zero_writes, 2, "first window and one top-up in the segment");
    assert_eq!(zeroed_to, segment);
}

#[test]
fn an_error_writing_zeros_ahead_is_fail_stop() {
    // Invariant: the zero write is on the write path: EIO there fails the
    // batch whose records it follows, before that batch is synced.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    // The first batch writes the new segment's header, its record, then the
    // first window of zeros.
    mem.inject(Fault::WriteIo, 2);
    let err = wal.append(1, b"x".to_vec()).unwrap().wait().unwrap_err();
    assert!(
        matches!(&err, WalError::Poisoned { cause } if cause.contains("write zeros")),
        "{err}"
    );
    assert!(wal.append(1, b"y".to_vec()).is_err());
    drop(wal);
    let (_, rec) = mem_open(&mem.crash(CrashMode::DropUnsynced), WalOptions::default()).unwrap();
    assert!(records(&rec).is_empty(), "the failed batch was synced");
}

#[test]
fn a_full_queue_answers_full_or_waits() {
    // Invariant: the queue never grows past queue_len_max; try_append says Full.
    let mem = MemStorage::new();
    let options = WalOptions {
        queue_len_max: 4,
        ..WalOptions::default()
    };
    let (wal, _) = mem_open(&mem, options).unwrap();
    wal.append(1, vec![0]).unwrap().wait().unwrap();
    let pause = mem.pause_syncs();
    let first = wal.append(1, vec![1]).unwrap();
    mem.wait_for_paused_syncs(1);
    let queued: Vec<_> = (0..4)
        .map(|_| wal.try_append(1, vec![2]).unwrap())
        .collect();
    assert!(matches!(
        wal.try_append(1, vec![3]),
        Err(WalError::Full { queue_len: 4, .. })
    ));
    assert_eq!(wal.queue_depth().0, 4);
    drop(pause);
    first.wait().unwrap();
    for q in queued {
        q.wait().unwrap();
    }
    wal.try_append(1, vec![4]).unwrap().wait().unwrap();
}

#[test]
fn oversized_records_and_bad_options_are_refused() {
    // Invariant: limits are checked before anything is queued.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, small()).unwrap();
    assert!(matches!(
        wal.append(1, vec![0; 1025]),
        Err(WalError::RecordTooLarge {
            bytes: 1025,
            max: 1024
        })
    ));
    assert_eq!(wal.next_lsn(), 1);
    let bad = WalOptions {
        segment_bytes: 1000,
        ..small()
    };
    assert!(matches!(
        mem_open(&MemStorage::new(), bad),
        Err(WalError::InvalidOptions(_))
    ));
}

#[test]
fn a_second_owner_is_refused_with_the_holders_pid() {
    // Invariant: one process (one open) owns a directory; the refusal names the pid.
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(tmp.path(), WalOptions::default()).unwrap();
    match Wal::open(tmp.path(), WalOptions::default()) {
        Err(WalError::Locked { holder_pid, .. }) => {
            assert_eq!(holder_pid, Some(std::process::id()))
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
    drop(wal);
    Wal::open(tmp.path(), WalOptions::default()).unwrap();
}

/// Writes `n` records, one batch each, and returns the path of the last segment.
fn write_log(backend: &Backend, n: u64) -> PathBuf {
    let (wal, _) = backend.open(small()).unwrap();
    append_all(&wal, 1..=n);
    drop(wal);
    let storage = backend.storage();
    let mut names: Vec<String> = storage
        .list(&backend.dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    backend.dir().join(names.last().unwrap())
}

/// Overwrites bytes of a file on either backend.
fn damage(backend: &Backend, path: &Path, offset: u64, bytes: &[u8]) {
    match backend {
        Backend::Mem(m) => m.corrupt(path, offset, bytes).unwrap(),
        Backend::Std(_) => {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(bytes, offset).unwrap();
        }
    }
}

/// Offsets of the frames in a segment image.
fn frame_offsets(storage: &dyn Storage, path: &Path) -> Vec<u64> {
    let view = storage.read(path).unwrap();
    reader::Frames::new(&view, view.len())
        .map_while(|r| r.ok())
        .map(|r| r.offset)
        .collect()
}

#[test]
fn a_torn_last_record_is_cut_kept_aside_and_the_log_continues() {
    // Invariant: tolerate-torn-tail cuts only the torn batch, copies the cut
    // bytes to <segment>.broken, zeroes the tail, and a second open is clean.
    for backend in Backend::all() {
        let last = write_log(&backend, 40);
        let storage = backend.storage();
        let offsets = frame_offsets(storage.as_ref(), &last);
        let tail = *offsets.last().unwrap();
        let before = storage.read(&last).unwrap().to_vec();
        damage(&backend, &last, tail + 30, &[0xff]);
        let (wal, rec) = backend.open(small()).unwrap();
        let t = rec.report.truncation.clone().expect("a cut");
        assert_eq!(t.cut_offset, tail);
        assert_eq!(t.segment, last);
        assert!(
            matches!(t.damage, Damage::Frame(FrameDamage::BadCrc { .. })),
            "{:?}",
            t.damage
        );
        assert_eq!(t.first_lsn_dropped, 40);
        let side = storage.read(&t.broken_files[0]).unwrap().to_vec();
        let mut expected = before[tail as usize..].to_vec();
        expected[30] = 0xff;
        while expected.last() == Some(&0) {
            expected.pop();
        }
        assert_eq!(side, expected);
        assert_eq!(records(&rec).len(), 39);
        let view = storage.read(&last).unwrap();
        assert!(
            view[tail as usize..].iter().all(|&b| b == 0),
            "stale bytes after the cut"
        );
        drop(view);
        append_all(&wal, 40..=45);
        drop((wal, rec));
        let (_, rec) = backend.open(small()).unwrap();
        assert!(rec.report.truncation.is_none());
        assert_eq!(records(&rec).len(), 45);
    }
}

#[test]
fn strict_mode_refuses_a_torn_tail() {
    // Invariant: strict opens nothing with any anomaly.
    for backend in Backend::all() {
        let last = write_log(&backend, 10);
        let tail = *frame_offsets(backend.storage().as_ref(), &last)
            .last()
            .unwrap();
        damage(&backend, &last, tail + 8, &[0x01]);
        let strict = WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..small()
        };
        match backend.open(strict) {
            Err(WalError::Corrupted {
                segment,
                offset,
                lsn,
                ..
            }) => {
                assert_eq!((segment, offset, lsn), (last, tail, 10));
            }
            other => panic!("strict accepted a torn tail: {:?}", other.err()),
        }
    }
}

#[test]
fn mid_log_damage_is_refused_with_file_offset_and_lsn() {
    // Invariant: a bad record followed by valid ones is corruption, refused
    // in both tolerate and strict modes, naming the exact place.
    for backend in Backend::all() {
        let last = write_log(&backend, 40);
        let storage = backend.storage();
        let offsets = frame_offsets(storage.as_ref(), &last);
        let first_lsn =
            super::segment::parse_segment_name(last.file_name().unwrap().to_str().unwrap())
                .unwrap();
        damage(&backend, &last, offsets[0] + 20, &[0xaa]);
        for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Strict] {
            match backend.open(WalOptions {
                recovery_mode: mode,
                ..small()
            }) {
                Err(WalError::Corrupted {
                    segment,
                    offset,
                    lsn,
                    kind,
                }) => {
                    assert_eq!(segment, last);
                    assert_eq!(offset, offsets[0]);
                    assert_eq!(lsn, first_lsn);
                    assert!(matches!(kind, Damage::Frame(FrameDamage::BadCrc { .. })));
                }
                other => panic!("{mode}: mid-log damage accepted: {:?}", other.err()),
            }
        }
    }
}

#[test]
fn damage_in_an_earlier_segment_is_refused_even_at_its_end() {
    // Invariant: only the last segment can have a torn tail.
    for backend in Backend::all() {
        write_log(&backend, 60);
        let storage = backend.storage();
        let first = backend.dir().join(segment_name(1));
        let last_frame = *frame_offsets(storage.as_ref(), &first).last().unwrap();
        damage(&backend, &first, last_frame + 26, &[0x55]);
        match backend.open(small()) {
            Err(WalError::Corrupted {
                segment, offset, ..
            }) => {
                assert_eq!((segment, offset), (first, last_frame));
            }
            other => panic!("accepted: {:?}", other.err()),
        }
    }
}

#[test]
fn point_in_time_cuts_at_the_first_bad_record_and_sets_later_segments_aside() {
    // Invariant: point-in-time keeps exactly the records before the damage
    // and reports the dropped LSN range.
    for backend in Backend::all() {
        write_log(&backend, 60);
        let storage = backend.storage();
        let first = backend.dir().join(segment_name(1));
        let offsets = frame_offsets(storage.as_ref(), &first);
        damage(&backend, &first, offsets[3] + 24, &[0x55]);
        let pit = WalOptions {
            recovery_mode: RecoveryMode::PointInTime,
            ..small()
        };
        let (wal, rec) = backend.open(pit.clone()).unwrap();
        let t = rec.report.truncation.clone().unwrap();
        assert_eq!(records(&rec).len(), 3);
        assert_eq!(t.first_lsn_dropped, 4);
        assert_eq!(t.last_lsn_dropped, Some(60));
        assert!(t.broken_files.len() > 1);
        append_all(&wal, 4..=5);
        drop((wal, rec));
        let (_, rec) = backend.open(small()).unwrap();
        assert_eq!(records(&rec).len(), 5);
    }
}

#[test]
fn missing_and_swapped_segments_are_sequence_damage() {
    // Invariant: a deleted middle segment or two swapped segment files are
    // refused as sequence damage, not read around.
    for backend in Backend::all() {
        write_log(&backend, 80);
        let storage = backend.storage();
        let dir = backend.dir();
        let mut names: Vec<String> = storage
            .list(&dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".wal"))
            .collect();
        names.sort();
        assert!(names.len() >= 4);
        // Swap the second and third.
        let (a, b) = (dir.join(&names[1]), dir.join(&names[2]));
        let tmp = dir.join("swap");
        storage.rename(&a, &tmp).unwrap();
        storage.rename(&b, &a).unwrap();
        storage.rename(&tmp, &b).unwrap();
        match backend.open(small()) {
            Err(WalError::Corrupted { kind, segment, .. }) => {
                assert_eq!(kind.class(), DamageClass::Sequence, "{kind}");
                assert_eq!(segment, a);
            }
            other => panic!("swap accepted: {:?}", other.err()),
        }
        storage.rename(&a, &tmp).unwrap();
        storage.rename(&b, &a).unwrap();
        storage.rename(&tmp, &b).unwrap();
        storage.remove(&a).unwrap();
        match backend.open(small()) {
            Err(WalError::Corrupted {
                kind: Damage::MissingSegment { .. },
                segment,
                ..
            }) => assert_eq!(segment, b),
            other => panic!("gap accepted: {:?}", other.err()),
        }
    }
}

#[test]
fn an_unfinished_segment_creation_is_removed_on_open() {
    // Invariant: a *.wal.tmp left by a crash mid-roll is deleted, durably.
    for backend in Backend::all() {
        write_log(&backend, 5);
        let storage = backend.storage();
        let tmp = backend.dir().join("00000000000000000099.wal.tmp");
        storage
            .create_new(&tmp)
            .unwrap()
            .write_all_at(b"partial", 0)
            .unwrap();
        let (_, rec) = backend.open(small()).unwrap();
        assert_eq!(rec.report.removed_temp_files, vec![tmp.clone()]);
        assert!(!storage.exists(&tmp).unwrap());
        assert_eq!(records(&rec).len(), 5);
    }
}

#[test]
fn garbage_appended_after_the_log_is_a_torn_tail() {
    // Invariant: non-zero bytes after the end of written data are cut, not replayed.
    for backend in Backend::all() {
        let last = write_log(&backend, 10);
        let storage = backend.storage();
        let end = *frame_offsets(storage.as_ref(), &last).last().unwrap() + frame_bytes(300) as u64;
        damage(&backend, &last, end + 64, b"garbage garbage garbage");
        let (_, rec) = backend.open(small()).unwrap();
        let t = rec.report.truncation.clone().unwrap();
        assert_eq!(t.damage, Damage::GarbageAfterEnd);
        assert_eq!(records(&rec).len(), 10);
        assert!(t.cut_offset >= SEGMENT_HEADER_LEN as u64);
    }
}

#[test]
fn wait_durable_resolves_only_after_the_covering_sync() {
    // Invariant: `wait_durable(lsn)` resolves only once `durable_lsn >= lsn`
    // (woken by the writer, not by polling), at once for an LSN already
    // durable, and with the poisoning error if the writer fails first.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    wal.append(1, b"a".to_vec()).unwrap().wait().unwrap();
    assert_eq!(futures_executor::block_on(wal.wait_durable(1)).unwrap(), 1);
    assert_eq!(futures_executor::block_on(wal.wait_durable(0)).unwrap(), 1);
    let pause = mem.pause_syncs();
    let pending = wal.append(1, b"b".to_vec()).unwrap();
    mem.wait_for_paused_syncs(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = wal.wait_durable(2);
    let waiter = std::thread::spawn(move || tx.send(futures_executor::block_on(waiting)));
    assert!(
        rx.try_recv().is_err(),
        "resolved while the covering sync is paused"
    );
    assert_eq!(wal.durable_lsn(), 1);
    drop(pause);
    assert_eq!(pending.wait().unwrap(), 2);
    assert_eq!(rx.recv().unwrap().unwrap(), 2);
    waiter.join().unwrap().unwrap();

    mem.inject(Fault::SyncIo, 0);
    let failing = wal.wait_durable(3);
    assert!(wal.append(1, b"c".to_vec()).unwrap().wait().is_err());
    assert!(matches!(
        futures_executor::block_on(failing),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        futures_executor::block_on(wal.wait_durable(4)),
        Err(WalError::Poisoned { .. })
    ));
}

#[test]
fn on_durable_calls_only_after_the_covering_sync() {
    // Invariant: `on_durable(lsn)` runs its call only once `durable_lsn >=
    // lsn`, at once for an LSN already durable, with the poisoning error if
    // the writer fails first, and refuses an LSN not appended yet.
    let call = |tx: std::sync::mpsc::Sender<Result<u64, WalError>>| -> crate::wal::OnDurable {
        Box::new(move |r| {
            let _ = tx.send(r);
        })
    };
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    wal.append(1, b"a".to_vec()).unwrap().wait().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    wal.on_durable(1, call(tx.clone())).unwrap();
    assert_eq!(rx.try_recv().unwrap().unwrap(), 1, "not called at once");

    assert!(matches!(
        wal.on_durable(2, call(tx.clone())),
        Err(WalError::InvalidOptions(_))
    ));
    let pause = mem.pause_syncs();
    let pending = wal.append(1, b"b".to_vec()).unwrap();
    mem.wait_for_paused_syncs(1);
    wal.on_durable(2, call(tx.clone())).unwrap();
    assert!(
        rx.try_recv().is_err(),
        "called while the covering sync is paused"
    );
    assert_eq!(wal.durable_lsn(), 1);
    drop(pause);
    assert_eq!(pending.wait().unwrap(), 2);
    assert_eq!(rx.recv().unwrap().unwrap(), 2);

    mem.inject(Fault::SyncIo, 0);
    let failing = wal.append(1, b"c".to_vec()).unwrap();
    wal.on_durable(3, call(tx.clone())).unwrap();
    assert!(failing.wait().is_err());
    assert!(matches!(rx.recv().unwrap(), Err(WalError::Poisoned { .. })));
}

#[test]
fn wait_durable_fails_when_the_log_closes_first() {
    // Invariant: a wait for an LSN that will never be written ends with
    // `Closed` when the log closes, instead of hanging.
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, WalOptions::default()).unwrap();
    let never = wal.wait_durable(5);
    wal.close().unwrap();
    assert!(matches!(
        futures_executor::block_on(never),
        Err(WalError::Closed)
    ));
}

#[test]
fn a_restart_makes_what_the_last_process_left_in_the_page_cache_durable() {
    // Invariant: records acknowledged after a restart survive power loss,
    // even when the previous process died between a segment rename and its
    // directory sync (regression: recovery used to build on unsynced names).
    let mem = MemStorage::new();
    let (wal, _) = mem_open(&mem, small()).unwrap();
    append_all(&wal, 1..=2);
    // Fail the directory sync that follows the next segment rename.
    mem.inject(Fault::SyncDirIo, 1);
    let mut lsn = 3;
    while wal.append(1, payload(lsn)).and_then(|a| a.wait()).is_ok() {
        lsn += 1;
    }
    drop(wal);
    // A process restart in the same boot: the page cache is still there.
    let (wal, rec) = mem_open(&mem, small()).unwrap();
    let recovered = records(&rec).len() as u64;
    let next = recovered + 1;
    append_all(&wal, next..=next + 2);
    drop((wal, rec));
    let (_, after_power_loss) = mem_open(&mem.crash(CrashMode::DropUnsynced), small()).unwrap();
    assert_eq!(
        records(&after_power_loss).len() as u64,
        next + 2,
        "acknowledged records lost"
    );
}

#[test]
fn repair_dry_runs_report_exactly_the_cut_they_would_make() {
    // Invariant: `repair_torn_tail` and `truncate_before` with `dry_run`
    // change nothing and return the `Truncation` the real cut returns; the
    // torn-tail cut is the one `Wal::open` makes.
    for backend in Backend::all() {
        let last = write_log(&backend, 60);
        let storage = backend.storage();
        let dir = backend.dir();
        let tail = *frame_offsets(storage.as_ref(), &last).last().unwrap();
        damage(&backend, &last, tail + 30, &[0xff]);
        let before = storage.read(&last).unwrap().to_vec();
        let plan = recovery::repair_torn_tail(storage.as_ref(), &dir, true)
            .unwrap()
            .expect("a torn tail");
        assert_eq!(storage.read(&last).unwrap().to_vec(), before);
        assert_eq!(plan.cut_offset, tail);
        assert_eq!(plan.first_lsn_dropped, 60);
        let done = recovery::repair_torn_tail(storage.as_ref(), &dir, false)
            .unwrap()
            .expect("a torn tail");
        assert_eq!(done, plan);
        assert_eq!(
            recovery::repair_torn_tail(storage.as_ref(), &dir, true).unwrap(),
            None
        );

        // Mid-log damage: refused by the torn-tail repair; an operator's cut
        // before LSN 2 keeps LSN 1 and sets everything else aside.
        let first = dir.join(segment_name(1));
        let offsets = frame_offsets(storage.as_ref(), &first);
        damage(&backend, &first, offsets[3] + 24, &[0x55]);
        assert!(matches!(
            recovery::repair_torn_tail(storage.as_ref(), &dir, true),
            Err(WalError::Corrupted { lsn: 4, .. })
        ));
        assert!(matches!(
            recovery::truncate_before(storage.as_ref(), &dir, 5, true),
            Err(WalError::InvalidOptions(_))
        ));
        let plan = recovery::truncate_before(storage.as_ref(), &dir, 2, true).unwrap();
        let done = recovery::truncate_before(storage.as_ref(), &dir, 2, false).unwrap();
        assert_eq!(done, plan);
        assert_eq!((done.cut_offset, done.first_lsn_dropped), (offsets[1], 2));
        assert_eq!(done.last_lsn_dropped, Some(59));
        let (_, rec) = backend.open(small()).unwrap();
        assert!(rec.report.truncation.is_none());
        assert_eq!(records(&rec).len(), 1);
    }
}

#[test]
fn scan_progress_reports_every_segment_byte_once() {
    // Invariant: the progress hook of `scan_dir_with_progress` is called once
    // per validated segment, with its length, so the calls add up to the
    // bytes of the log; a scan that stops at damage reports no more.
    for backend in Backend::all() {
        write_log(&backend, 60);
        let storage = backend.storage();
        let dir = backend.dir();
        let mut calls = vec![];
        let scan = recovery::scan_dir_with_progress(storage.as_ref(), &dir, &mut |b| calls.push(b))
            .unwrap();
        let lens: Vec<u64> = scan.segments.iter().map(|s| s.view.len() as u64).collect();
        assert!(lens.len() > 2);
        assert_eq!(calls, lens);

        let first = dir.join(segment_name(1));
        damage(
            &backend,
            &first,
            frame_offsets(storage.as_ref(), &first)[1] + 24,
            &[0x55],
        );
        let mut calls = vec![];
        recovery::scan_dir_with_progress(storage.as_ref(), &dir, &mut |b| calls.push(b)).unwrap();
        assert_eq!(calls, [lens[0]]);
    }
}
