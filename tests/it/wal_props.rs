//! Recovery against damage, as properties: random logs are written through
//! the real writer on the memory backend, then each is cut, zeroed, bit-flipped
//! and given garbage in thousands of ways, and every damaged copy is recovered
//! in all three modes and held to an exact expectation derived from the log's
//! layout (which batch, which frame, which segment the damage hit).
//!
//! A log is written once per proptest case and every damage runs against an
//! independent copy of it (`MemStorage::crash` after all syncs), which is what
//! makes ten thousand recoveries per run affordable.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{contextualize_config, Config, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use wconf::wal::format::{FLAG_BATCH_END, FRAME_ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use wconf::wal::recovery::Recovered;
use wconf::wal::segment::segment_name;
use wconf::wal::storage::{CrashMode, MemStorage, Storage};
use wconf::wal::{Damage, RecoveryMode, Truncation, Wal, WalError, WalOptions, KIND_SKIPPABLE};

/// Logs written per `cargo test` run, unless `PROPTEST_CASES` says otherwise.
const LOGS_DEFAULT: u32 = 5;
/// Damaged copies recovered per run at the default log count: the floor the
/// test asserts, so that a change which quietly skips cases fails.
const DAMAGE_CASES_MIN: u64 = 10_000;
/// Every log contributes at least this many (random flips top up the rest).
const DAMAGE_CASES_PER_LOG_MIN: u64 = DAMAGE_CASES_MIN.div_ceil(LOGS_DEFAULT as u64);
/// Cuts cover every byte offset from the start of this many last frames.
const CUT_FRAMES: usize = 3;
/// Flips at random places, on top of the targeted ones (one per segment
/// header, frame, frame padding and zero tail).
const RANDOM_FLIPS: usize = 160;
/// Small, so a log of a few dozen records spans several segments.
const SEGMENT_BYTES: u64 = 4096;
const PAYLOAD_BYTES_MAX: usize = 600;

fn dir() -> &'static Path {
    Path::new("/wal")
}

fn options(recovery_mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: 1024,
        // Larger than a segment: only the room left in a segment splits a
        // batch, so the groups the test queues become the batches on disk.
        batch_bytes_max: 2 * SEGMENT_BYTES as usize,
        queue_len_max: 1024,
        queue_bytes_max: 1 << 20,
        recovery_mode,
        ..WalOptions::default()
    }
}

fn open(mem: &MemStorage, mode: RecoveryMode) -> Result<(Wal, Recovered), WalError> {
    Wal::open_with(Arc::new(mem.clone()), dir(), options(mode))
}

/// What the log should hold, as the test planned it.
#[derive(Debug, Clone)]
struct Plan {
    /// Kind, payload length, and a seed for the payload bytes.
    records: Vec<(u16, usize, Fill)>,
    /// Sizes of the groups appended behind one held sync; each group becomes
    /// a batch of its first record and a batch of the rest.
    groups: Vec<usize>,
    /// Seeds the damage positions.
    seed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Fill {
    Random(u64),
    /// All zeros: zeroing such a payload changes nothing, and a torn write
    /// into it is invisible until the CRC is checked.
    Zeros,
    Ones,
}

fn payload(len: usize, fill: Fill) -> Vec<u8> {
    match fill {
        Fill::Random(seed) => {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..len).map(|_| rng.gen()).collect()
        }
        Fill::Zeros => vec![0; len],
        Fill::Ones => vec![0xff; len],
    }
}

fn plan() -> impl Strategy<Value = Plan> {
    // Sizes on each side of the 8-byte frame alignment, and those whose frame
    // length has a single bit set (32, 64, ... bytes), where one flipped bit
    // turns the length field into the zero that means "end of data".
    let boundary = prop::sample::select(vec![
        0usize, 1, 7, 8, 9, 15, 16, 17, 40, 104, 232, 488, 599, 600,
    ]);
    let len = prop_oneof![3 => 0..=PAYLOAD_BYTES_MAX, 1 => boundary];
    let kind = prop_oneof![
        1u16..=0x7fff,
        (1u16..=0x7fff).prop_map(|k| k | KIND_SKIPPABLE)
    ];
    let fill = prop_oneof![
        6 => any::<u64>().prop_map(Fill::Random),
        1 => Just(Fill::Zeros),
        1 => Just(Fill::Ones),
    ];
    let records = prop::collection::vec((kind, len, fill), 25..=70);
    let groups = prop::collection::vec(1usize..=6, 70);
    (records, groups, any::<u64>()).prop_map(|(records, sizes, seed)| {
        let mut groups = vec![];
        let mut left = records.len();
        for size in sizes {
            if left == 0 {
                break;
            }
            let size = size.min(left);
            groups.push(size);
            left -= size;
        }
        Plan {
            records,
            groups,
            seed,
        }
    })
}

/// Writes `plan` through the real writer. Each group is queued behind a held
/// sync so that it goes out as one batch, as group commit does under load.
fn write(plan: &Plan) -> (MemStorage, Vec<(u16, Vec<u8>)>) {
    let mem = MemStorage::new();
    let records: Vec<(u16, Vec<u8>)> = plan
        .records
        .iter()
        .map(|&(kind, len, fill)| (kind, payload(len, fill)))
        .collect();
    let (wal, _) = open(&mem, RecoveryMode::Strict).expect("open an empty log");
    let mut next = records.iter();
    for &size in &plan.groups {
        let pause = mem.pause_syncs();
        let (kind, first) = next.next().expect("groups cover the records");
        let first = wal.append(*kind, first.clone()).expect("append");
        // The writer holds the first record's sync (or the sync of a segment
        // it is creating for it): everything appended now waits behind it.
        mem.wait_for_paused_syncs(1);
        let rest: Vec<_> = (1..size)
            .map(|_| {
                let (kind, p) = next.next().expect("groups cover the records");
                wal.append(*kind, p.clone()).expect("append")
            })
            .collect();
        drop(pause);
        first.wait().expect("durable");
        for a in rest {
            a.wait().expect("durable");
        }
    }
    assert!(next.next().is_none(), "groups must cover every record");
    wal.close().expect("close");
    drop(wal);
    (mem, records)
}

/// One frame as the test reads it from the raw bytes, without the library's
/// reader.
#[derive(Debug, Clone, Copy)]
struct Frame {
    start: u64,
    /// Offset after the payload, where the padding starts.
    payload_end: u64,
    /// Offset after the padding.
    end: u64,
    lsn: u64,
    batch: usize,
}

#[derive(Debug, Clone, Copy)]
struct Batch {
    segment: usize,
    start: u64,
    end: u64,
    first_lsn: u64,
    last_lsn: u64,
}

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    image: Vec<u8>,
    first_lsn: u64,
    /// Offset after the last frame: zeros follow up to the file's end.
    data_end: u64,
    frames: Vec<Frame>,
}

impl Segment {
    fn last_lsn(&self) -> u64 {
        self.frames.last().expect("no empty segments").lsn
    }
}

/// The layout of a written log, read back from its raw bytes.
struct Log {
    records: Vec<(u16, Vec<u8>)>,
    segments: Vec<Segment>,
    batches: Vec<Batch>,
}

fn u16_at(b: &[u8], off: u64) -> u16 {
    let off = off as usize;
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: u64) -> u32 {
    let off = off as usize;
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: u64) -> u64 {
    let off = off as usize;
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Reads the layout of the log in `mem` straight from the bytes, checking
/// it against what was appended: the expectations of every damage case are
/// derived from this, so it must not trust the code under test.
fn layout(mem: &MemStorage, records: Vec<(u16, Vec<u8>)>) -> Log {
    let mut names: Vec<String> = mem.list(dir()).unwrap();
    names.sort();
    let mut segments = vec![];
    let mut batches: Vec<Batch> = vec![];
    let mut lsn = 1u64;
    let mut open_batch: Option<Batch> = None;
    for name in names {
        let path = dir().join(&name);
        let image = mem.read(&path).unwrap().to_vec();
        assert_eq!(
            image.len() as u64,
            SEGMENT_BYTES,
            "{name}: preallocated size"
        );
        assert_eq!(&image[..8], b"WCONFWAL");
        assert_eq!(
            u64_at(&image, 16),
            segments.len() as u64,
            "{name}: sequence"
        );
        assert_eq!(u64_at(&image, 24), lsn, "{name}: first LSN");
        assert_eq!(name, segment_name(lsn));
        let s = segments.len();
        let first_lsn = lsn;
        let mut frames = vec![];
        let mut off = SEGMENT_HEADER_LEN as u64;
        while off + 4 <= image.len() as u64 && u32_at(&image, off) != 0 {
            let (kind, payload) = &records[lsn as usize - 1];
            let frame_len = u32_at(&image, off) as u64;
            assert_eq!(frame_len, (FRAME_HEADER_LEN + payload.len()) as u64);
            assert_eq!(u16_at(&image, off + 4), *kind);
            assert_eq!(u64_at(&image, off + 8), lsn);
            let body = off + FRAME_HEADER_LEN as u64;
            assert_eq!(
                &image[body as usize..(off + frame_len) as usize],
                &payload[..]
            );
            let end = (off + frame_len).next_multiple_of(FRAME_ALIGN as u64);
            let batch_index = u32_at(&image, off + 16) as u64;
            let b = open_batch.get_or_insert(Batch {
                segment: s,
                start: off,
                end,
                first_lsn: lsn,
                last_lsn: lsn,
            });
            assert_eq!(
                (b.segment, batch_index),
                (s, lsn - b.first_lsn),
                "LSN {lsn}"
            );
            b.end = end;
            b.last_lsn = lsn;
            frames.push(Frame {
                start: off,
                payload_end: off + frame_len,
                end,
                lsn,
                batch: batches.len(),
            });
            if u16_at(&image, off + 6) & FLAG_BATCH_END != 0 {
                batches.push(open_batch.take().unwrap());
            }
            lsn += 1;
            off = end;
        }
        assert!(open_batch.is_none(), "{name}: a batch spans segments");
        assert!(!frames.is_empty(), "{name}: empty segment");
        assert!(
            image[off as usize..].iter().all(|&b| b == 0),
            "{name}: tail"
        );
        segments.push(Segment {
            path,
            image,
            first_lsn,
            data_end: off,
            frames,
        });
    }
    assert_eq!(lsn - 1, records.len() as u64, "every record is on disk");
    Log {
        records,
        segments,
        batches,
    }
}

impl Log {
    fn last(&self) -> usize {
        self.segments.len() - 1
    }

    /// What survives when the last segment's bytes from `x` on are lost: every
    /// record of an earlier segment and every batch of the last segment that
    /// ends at or before `x`. Returns the number of records kept and where
    /// the kept batches end.
    fn kept_before(&self, x: u64) -> (u64, u64) {
        let last = self.last();
        let mut kept = (self.segments[last].first_lsn - 1, SEGMENT_HEADER_LEN as u64);
        for b in self
            .batches
            .iter()
            .filter(|b| b.segment == last && b.end <= x)
        {
            kept = (b.last_lsn, b.end);
        }
        kept
    }

    /// The frame whose bytes (padding included) hold `offset`.
    fn frame_at(&self, segment: usize, offset: u64) -> Frame {
        let frames = &self.segments[segment].frames;
        let i = frames.partition_point(|f| f.end <= offset);
        assert!(frames[i].start <= offset, "offset {offset} between frames");
        frames[i]
    }
}

/// One way of damaging a copy of the log.
#[derive(Debug, Clone)]
enum Harm {
    /// The last segment shortened to this length (a crash before the
    /// preallocation or the write reached the disk).
    Truncate(u64),
    /// The last segment zeroed from this offset on (a write torn inside
    /// preallocated space).
    ZeroFrom(u64),
    /// One bit flipped in a segment (a bad sector, a stray write).
    Flip {
        segment: usize,
        offset: u64,
        bit: u8,
    },
    /// Non-zero bytes written at or after the end of a segment's data.
    Garbage {
        segment: usize,
        offset: u64,
        bytes: Vec<u8>,
    },
}

impl Harm {
    fn apply(&self, log: &Log, mem: &MemStorage) {
        let last = &log.segments[log.last()];
        match self {
            Harm::Truncate(x) => mem.truncate(&last.path, *x).unwrap(),
            Harm::ZeroFrom(x) => {
                let zeros = vec![0; last.image.len() - *x as usize];
                mem.corrupt(&last.path, *x, &zeros).unwrap()
            }
            Harm::Flip {
                segment,
                offset,
                bit,
            } => {
                let seg = &log.segments[*segment];
                let byte = seg.image[*offset as usize] ^ (1 << bit);
                mem.corrupt(&seg.path, *offset, &[byte]).unwrap()
            }
            Harm::Garbage {
                segment,
                offset,
                bytes,
            } => mem
                .corrupt(&log.segments[*segment].path, *offset, bytes)
                .unwrap(),
        }
    }

    /// The class of damage, for the tally that shows each was exercised.
    fn class(&self, log: &Log) -> &'static str {
        match self {
            Harm::Truncate(_) => "truncate",
            Harm::ZeroFrom(_) => "zero the tail",
            Harm::Flip {
                segment, offset, ..
            } => {
                let seg = &log.segments[*segment];
                if *offset < SEGMENT_HEADER_LEN as u64 {
                    "flip: segment header"
                } else if *offset >= seg.data_end {
                    "flip: zeros after the data"
                } else if *offset >= log.frame_at(*segment, *offset).payload_end {
                    "flip: frame padding"
                } else {
                    "flip: frame"
                }
            }
            Harm::Garbage { .. } => "garbage after the data",
        }
    }
}

/// What tolerant recovery must do with a damaged copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Opens with exactly the first `keep` records, and reports a cut when
    /// `cut` says so.
    Opens { keep: u64, cut: Option<Cut> },
    /// Refuses with `WalError::Corrupted` at this place (offset 0 and a
    /// `Damage::Header` for a damaged segment header).
    Refuses {
        segment: usize,
        offset: u64,
        lsn: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cut {
    /// Where the log must now end in the last segment.
    at: u64,
    /// Where the reported damage may be.
    damage: RangeInclusive<u64>,
}

#[derive(Debug)]
struct Expected {
    tolerate: Outcome,
    /// Records point-in-time recovery keeps: everything before the batch
    /// (or segment header) the damage is in.
    point_in_time: u64,
}

impl Expected {
    /// True when any mode sees a problem: strict refuses exactly then.
    fn problem(&self) -> bool {
        !matches!(self.tolerate, Outcome::Opens { cut: None, .. })
    }
}

fn any_nonzero(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b != 0)
}

/// The exact expectation for `harm`, from the layout alone.
fn expect(log: &Log, harm: &Harm) -> Expected {
    let last = &log.segments[log.last()];
    // A cut at `x` keeps the complete batches before it. A cut is reported
    // exactly when non-zero bytes remain after them (a torn frame, or the
    // frames of an incomplete batch); a clean stop at a batch end is no cut.
    let cut_at = |lost_from: u64, left_until: u64| {
        let (keep, at) = log.kept_before(lost_from);
        let left = &last.image[at as usize..left_until.max(at) as usize];
        let cut = any_nonzero(left).then_some(Cut {
            at,
            damage: at..=lost_from,
        });
        Expected {
            tolerate: Outcome::Opens { keep, cut },
            point_in_time: keep,
        }
    };
    // Damage found at `offset` of `segment`, where LSN `lsn` was expected:
    // when it can be the torn tail, cut at `at`, dropping every LSN from
    // `first_dropped` on; otherwise refused right there. Point-in-time cuts
    // at `at` in either case.
    let found_at =
        |segment: usize, offset: u64, lsn: u64, torn: bool, at: u64, first_dropped: u64| {
            let tolerate = if torn {
                Outcome::Opens {
                    keep: first_dropped - 1,
                    cut: Some(Cut {
                        at,
                        damage: offset..=offset,
                    }),
                }
            } else {
                Outcome::Refuses {
                    segment,
                    offset,
                    lsn,
                }
            };
            Expected {
                tolerate,
                point_in_time: first_dropped - 1,
            }
        };
    // Damage at or after a segment's data end: in the last segment a torn
    // tail that drops nothing, in any other mid-log corruption.
    let after_data = |segment: usize| {
        let seg = &log.segments[segment];
        let next = seg.last_lsn() + 1;
        let torn = segment == log.last();
        found_at(segment, seg.data_end, next, torn, seg.data_end, next)
    };
    match *harm {
        Harm::Truncate(x) => cut_at(x, x),
        Harm::ZeroFrom(x) => {
            // Zeroing bytes that are already zero changes nothing: what is
            // lost starts at the first non-zero byte at or after `x`.
            let lost_from = last.image[x as usize..]
                .iter()
                .position(|&b| b != 0)
                .map_or(last.image.len() as u64, |i| x + i as u64);
            cut_at(lost_from, x)
        }
        Harm::Flip {
            segment, offset, ..
        } => {
            let seg = &log.segments[segment];
            if offset < SEGMENT_HEADER_LEN as u64 {
                // Never a torn tail: a segment's header is durable before
                // its name is.
                return found_at(segment, 0, seg.first_lsn, false, 0, seg.first_lsn);
            }
            if offset >= seg.data_end {
                return after_data(segment);
            }
            let frame = log.frame_at(segment, offset);
            let batch = log.batches[frame.batch];
            // Only the last batch can be a torn write; a damaged frame in any
            // earlier one is followed by valid frames of another batch.
            let torn = frame.batch + 1 == log.batches.len();
            found_at(
                segment,
                frame.start,
                frame.lsn,
                torn,
                batch.start,
                batch.first_lsn,
            )
        }
        Harm::Garbage { segment, .. } => after_data(segment),
    }
}

/// Replays `rec` and checks it is exactly the first records of the log;
/// returns how many.
fn replay(log: &Log, rec: &Recovered, harm: &Harm, mode: RecoveryMode) -> u64 {
    let mut n = 0u64;
    for r in rec.records() {
        let r = r.unwrap_or_else(|e| panic!("{harm:?} {mode}: replay failed: {e}"));
        let (kind, payload) = &log.records[n as usize];
        assert_eq!(r.lsn, n + 1, "{harm:?} {mode}: LSN gap");
        assert!(
            r.kind == *kind && r.payload == &payload[..],
            "{harm:?} {mode}: LSN {} differs from what was written",
            r.lsn
        );
        n += 1;
    }
    assert_eq!(rec.report.records, n, "{harm:?} {mode}: report");
    assert_eq!(rec.report.last_lsn, n, "{harm:?} {mode}: report");
    n
}

fn check_cut(log: &Log, harm: &Harm, got: Option<&Truncation>, want: Option<&Cut>, keep: u64) {
    match (got, want) {
        (None, None) => {}
        (Some(t), Some(cut)) => {
            assert_eq!(t.segment, log.segments[log.last()].path, "{harm:?}: {t:?}");
            assert_eq!(t.cut_offset, cut.at, "{harm:?}: {t:?}");
            assert_eq!(t.first_lsn_dropped, keep + 1, "{harm:?}: {t:?}");
            assert!(cut.damage.contains(&t.damage_offset), "{harm:?}: {t:?}");
        }
        (got, want) => panic!("{harm:?}: cut {got:?}, expected {want:?}"),
    }
}

/// Where a refusal points: segment path, offset, LSN, damage.
fn refusal(e: WalError, harm: &Harm, mode: RecoveryMode) -> (PathBuf, u64, u64, Damage) {
    match e {
        WalError::Corrupted {
            segment,
            offset,
            lsn,
            kind,
        } => (segment, offset, lsn, kind),
        e => panic!("{harm:?} {mode}: refused with {e}, expected Corrupted"),
    }
}

/// Appends a record through `wal` (opened on `mem` in `mode` with `keep`
/// records), closes it, and checks that a strict reopen finds those records
/// and the new one: recovery left the writer at the right offset, LSN and
/// chain CRC, and nothing stale behind it.
fn append_after_recovery(
    log: &Log,
    mem: &MemStorage,
    wal: Wal,
    keep: u64,
    harm: &Harm,
    mode: RecoveryMode,
) {
    const APPENDED: &[u8] = b"appended after recovery";
    let lsn = wal
        .append(1, APPENDED.to_vec())
        .and_then(|a| a.wait())
        .unwrap_or_else(|e| panic!("{harm:?} {mode}: append after recovery: {e}"));
    assert_eq!(lsn, keep + 1, "{harm:?} {mode}: next LSN after recovery");
    wal.close().unwrap();
    drop(wal);
    let (_wal, rec) = open(mem, RecoveryMode::Strict)
        .unwrap_or_else(|e| panic!("{harm:?} {mode}: reopen after append refused: {e}"));
    let mut records = rec.records().map(|r| r.unwrap());
    for (i, (kind, payload)) in log.records[..keep as usize].iter().enumerate() {
        let r = records.next().unwrap();
        assert_eq!(
            (r.lsn, r.kind, r.payload),
            (i as u64 + 1, *kind, &payload[..])
        );
    }
    let r = records.next().expect("the appended record");
    assert_eq!(
        (r.lsn, r.kind, r.payload),
        (keep + 1, 1, APPENDED),
        "{harm:?} {mode}"
    );
    assert!(records.next().is_none(), "{harm:?} {mode}");
}

/// Recovers a damaged copy of the log in every mode and holds each to the
/// expectation for `harm`. With `append`, also checks that the log each
/// opening mode leaves behind takes a new record (done for a sample only:
/// it costs another recovery).
fn check(log: &Log, base: &MemStorage, harm: &Harm, append: bool) -> Outcome {
    let want = expect(log, harm);
    let damaged = base.crash(CrashMode::KeepUnsyncedWrites);
    harm.apply(log, &damaged);

    // Strict and point-in-time recover copies: every recovery may repair the
    // storage it opens.
    let strict = match open(
        &damaged.crash(CrashMode::KeepUnsyncedWrites),
        RecoveryMode::Strict,
    ) {
        Ok((_wal, rec)) => {
            // No problem is not "nothing lost": a cut exactly at a batch end
            // leaves a shorter log that is valid in every mode.
            let Outcome::Opens { keep, cut: None } = want.tolerate else {
                panic!("{harm:?}: strict opened a damaged log");
            };
            let got = replay(log, &rec, harm, RecoveryMode::Strict);
            assert_eq!(got, keep, "{harm:?}: strict");
            None
        }
        Err(e) => {
            assert!(want.problem(), "{harm:?}: strict refused a clean log: {e}");
            Some(refusal(e, harm, RecoveryMode::Strict))
        }
    };
    let mode = RecoveryMode::PointInTime;
    let point_in_time = damaged.crash(CrashMode::KeepUnsyncedWrites);
    let (wal, rec) =
        open(&point_in_time, mode).unwrap_or_else(|e| panic!("{harm:?} {mode}: refused: {e}"));
    assert_eq!(
        replay(log, &rec, harm, mode),
        want.point_in_time,
        "{harm:?} {mode}"
    );
    assert_eq!(
        rec.report.truncation.is_some(),
        want.problem(),
        "{harm:?} {mode}"
    );
    drop(rec);
    if append {
        append_after_recovery(log, &point_in_time, wal, want.point_in_time, harm, mode);
    }

    let mode = RecoveryMode::TolerateTornTail;
    match (open(&damaged, mode), &want.tolerate) {
        (Ok((wal, rec)), Outcome::Opens { keep, cut }) => {
            assert_eq!(replay(log, &rec, harm, mode), *keep, "{harm:?}");
            check_cut(
                log,
                harm,
                rec.report.truncation.as_ref(),
                cut.as_ref(),
                *keep,
            );
            drop((wal, rec));
            // Idempotent: what the first recovery left is a clean log.
            let (wal, again) = open(&damaged, mode)
                .unwrap_or_else(|e| panic!("{harm:?}: second recovery refused: {e}"));
            assert_eq!(
                replay(log, &again, harm, mode),
                *keep,
                "{harm:?}: second recovery"
            );
            assert!(
                again.report.truncation.is_none(),
                "{harm:?}: second recovery cut again: {:?}",
                again.report.truncation
            );
            drop(again);
            if append {
                append_after_recovery(log, &damaged, wal, *keep, harm, mode);
            }
        }
        (
            Err(e),
            Outcome::Refuses {
                segment,
                offset,
                lsn,
            },
        ) => {
            let got = refusal(e, harm, mode);
            assert_eq!(
                (&got.0, got.1, got.2),
                (&log.segments[*segment].path, *offset, *lsn),
                "{harm:?}: refused at the wrong place: {}",
                got.3
            );
            if *offset == 0 {
                assert!(matches!(got.3, Damage::Header(_)), "{harm:?}: {}", got.3);
            }
            assert_eq!(
                strict.as_ref(),
                Some(&got),
                "{harm:?}: strict and tolerant disagree"
            );
        }
        (Ok((_, rec)), want) => panic!(
            "{harm:?}: opened with {} records, cut {:?}; expected {want:?}",
            rec.report.records, rec.report.truncation
        ),
        (Err(e), want) => panic!("{harm:?}: refused: {e}; expected {want:?}"),
    }
    want.tolerate
}

/// Every damage case for one log: cuts and zeroing at every offset of the
/// last frames, targeted and random bit flips, and garbage after the data.
fn harms(log: &Log, rng: &mut StdRng) -> Vec<Harm> {
    let mut out = vec![];
    let last = &log.segments[log.last()];
    let len = last.image.len() as u64;
    let from = last.frames[last.frames.len().saturating_sub(CUT_FRAMES)].start;
    let to = len.min(last.data_end + 2 * FRAME_HEADER_LEN as u64);
    for x in from..=to {
        out.push(Harm::Truncate(x));
        out.push(Harm::ZeroFrom(x));
    }

    let flip = |segment: usize, offsets: std::ops::Range<u64>, rng: &mut StdRng| {
        (!offsets.is_empty()).then(|| Harm::Flip {
            segment,
            offset: rng.gen_range(offsets),
            bit: rng.gen_range(0..8),
        })
    };
    for (s, seg) in log.segments.iter().enumerate() {
        let len = seg.image.len() as u64;
        out.extend(flip(s, 0..SEGMENT_HEADER_LEN as u64, rng));
        out.extend(flip(s, seg.data_end..len, rng));
        for f in &seg.frames {
            out.extend(flip(s, f.start..f.payload_end, rng));
            out.extend(flip(s, f.payload_end..f.end, rng));
        }
    }
    // Top up with random flips anywhere, so that every log contributes at
    // least its share of the run's floor however small its last frames are.
    let random = RANDOM_FLIPS.max((DAMAGE_CASES_PER_LOG_MIN as usize).saturating_sub(out.len()));
    for _ in 0..random {
        let s = rng.gen_range(0..log.segments.len());
        out.extend(flip(s, 0..log.segments[s].image.len() as u64, rng));
    }

    let mut garbage = |segment: usize, offset: u64, rng: &mut StdRng, fit: bool| {
        let mut n = rng.gen_range(1..=64u64);
        if fit {
            n = n.min(log.segments[segment].image.len() as u64 - offset);
        }
        let bytes = (0..n).map(|_| rng.gen_range(1..=255u8)).collect();
        out.push(Harm::Garbage {
            segment,
            offset,
            bytes,
        });
    };
    let end = last.data_end;
    for offset in [
        end,
        end + 1,
        end + 4,
        end + 8,
        end + FRAME_HEADER_LEN as u64,
    ] {
        if offset < len {
            garbage(log.last(), offset, rng, true);
        }
    }
    if end < len {
        garbage(log.last(), rng.gen_range(end..len), rng, true);
    }
    // Past the preallocated end: the file grows.
    garbage(log.last(), len, rng, false);
    let sealed_with_room: Vec<usize> = (0..log.last())
        .filter(|&s| log.segments[s].data_end < log.segments[s].image.len() as u64)
        .collect();
    if let Some(&s) = sealed_with_room.last() {
        let seg = &log.segments[s];
        garbage(
            s,
            rng.gen_range(seg.data_end..seg.image.len() as u64),
            rng,
            true,
        );
    }
    out
}

/// What a run exercised, so a change that quietly stops exercising a class
/// of damage (or writing multi-record batches, or rolling segments) fails.
#[derive(Default)]
struct Tally {
    logs: u64,
    cases: u64,
    classes: std::collections::BTreeMap<&'static str, u64>,
    refused: u64,
    cut: u64,
    clean: u64,
    /// Cases that also appended after recovery.
    appended: u64,
    multi_record_batches: u64,
    logs_with_3_segments: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.logs += other.logs;
        self.cases += other.cases;
        for (class, n) in other.classes {
            *self.classes.entry(class).or_default() += n;
        }
        self.refused += other.refused;
        self.cut += other.cut;
        self.clean += other.clean;
        self.appended += other.appended;
        self.multi_record_batches += other.multi_record_batches;
        self.logs_with_3_segments += other.logs_with_3_segments;
    }
}

/// One damage case in this many also appends after recovery.
const APPEND_SAMPLE: usize = 8;

/// Workers that recover damaged copies side by side. A recovery spends most
/// of its wall time waiting for the writer thread it starts and stops to be
/// scheduled, so more workers than cores pay off.
const WORKERS: usize = 4;

/// Runs `check` for every harm, spread over `WORKERS` threads; a failure in
/// one stops the others and is re-raised as it was.
fn check_all(log: &Log, base: &MemStorage, harms: &[Harm]) -> Tally {
    struct StopOthersOnPanic<'a>(&'a AtomicBool);
    impl Drop for StopOthersOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.store(true, Ordering::Relaxed);
            }
        }
    }
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let failed = &failed;
                scope.spawn(move || {
                    let _stop = StopOthersOnPanic(failed);
                    let mut t = Tally::default();
                    for (i, harm) in harms.iter().enumerate().skip(w).step_by(WORKERS) {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let append = i % APPEND_SAMPLE == 0;
                        t.appended += u64::from(append);
                        match check(log, base, harm, append) {
                            Outcome::Refuses { .. } => t.refused += 1,
                            Outcome::Opens { cut: Some(_), .. } => t.cut += 1,
                            Outcome::Opens { cut: None, .. } => t.clean += 1,
                        }
                        *t.classes.entry(harm.class(log)).or_default() += 1;
                        t.cases += 1;
                    }
                    t
                })
            })
            .collect();
        let mut total = Tally::default();
        for w in workers {
            match w.join() {
                Ok(t) => total.add(t),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        total
    })
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} logs, {} damage cases (refused {}, cut {}, clean {}; {} appended after); \
             {} multi-record batches, {} logs of 3+ segments; by class {:?}",
            self.logs,
            self.cases,
            self.refused,
            self.cut,
            self.clean,
            self.appended,
            self.multi_record_batches,
            self.logs_with_3_segments,
            self.classes
        )
    }
}

#[test]
fn recovery_returns_exactly_the_expected_prefix_under_any_single_damage() {
    // Invariant: after any one cut, torn tail, bit flip or garbage, tolerant
    // recovery either returns exactly the records of the complete batches
    // before the damage (all of them for damage after the data; none of the
    // last batch for damage inside it) and cuts nothing more when run again,
    // or, for damage anywhere but the last batch of the last segment or its
    // zero tail, refuses with the damaged frame's segment, offset and LSN.
    // Strict refuses exactly when there is a problem; point-in-time always
    // opens, with the records before the damaged batch or segment.
    let config = contextualize_config(Config {
        cases: LOGS_DEFAULT,
        source_file: Some(file!()),
        // Each case recovers thousands of copies: shrink briefly.
        max_shrink_iters: 32,
        ..Config::default()
    });
    let logs = config.cases;
    let mut runner = TestRunner::new(config);
    let tally = std::cell::RefCell::new(Tally::default());
    runner
        .run(&plan(), |plan| {
            let (mem, records) = write(&plan);
            let log = layout(&mem, records);
            // After every sync, a crash keeping unsynced writes is an exact
            // copy; `check` damages copies of this one and never it.
            let base = mem.crash(CrashMode::KeepUnsyncedWrites);
            drop(mem);
            let mut rng = StdRng::seed_from_u64(plan.seed);
            let harms = harms(&log, &mut rng);
            let mut t = tally.borrow_mut();
            t.add(check_all(&log, &base, &harms));
            t.logs += 1;
            t.multi_record_batches += log
                .batches
                .iter()
                .filter(|b| b.last_lsn > b.first_lsn)
                .count() as u64;
            t.logs_with_3_segments += u64::from(log.segments.len() >= 3);
            for seg in &log.segments {
                assert_eq!(
                    &**base.read(&seg.path).unwrap(),
                    &seg.image[..],
                    "a damaged copy changed the original"
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let t = tally.into_inner();
    eprintln!("wal_props: {t}");
    // Proptest replays persisted failures first, so there may be more.
    assert!(t.logs >= u64::from(logs), "{t}");
    assert!(t.cases >= t.logs * DAMAGE_CASES_PER_LOG_MIN, "{t}");
    assert_eq!(
        t.classes.len(),
        7,
        "a class of damage was never exercised: {t}"
    );
    assert!(
        t.refused > 0 && t.cut > 0 && t.clean > 0 && t.appended > 0,
        "{t}"
    );
    assert!(
        t.multi_record_batches > 0 && t.logs_with_3_segments > 0,
        "{t}"
    );
}

#[test]
fn a_crash_copy_after_every_sync_is_exact_and_independent() {
    // Invariant: what the property test relies on: once every write is
    // synced, `crash(KeepUnsyncedWrites)` is byte-identical to the original,
    // and damaging or recovering the copy leaves the original untouched.
    let plan = Plan {
        records: (0..30)
            .map(|i| (1, 200 + i, Fill::Random(i as u64)))
            .collect(),
        groups: vec![1, 4, 25],
        seed: 0,
    };
    let (mem, records) = write(&plan);
    let log = layout(&mem, records);
    assert!(log.segments.len() >= 2);
    let copy = mem.crash(CrashMode::KeepUnsyncedWrites);
    for seg in &log.segments {
        assert_eq!(&**copy.read(&seg.path).unwrap(), &seg.image[..]);
    }
    let first = &log.segments[0];
    let harm = Harm::Flip {
        segment: 0,
        offset: first.frames[0].start + 30,
        bit: 3,
    };
    harm.apply(&log, &copy);
    let last = &log.segments[log.last()];
    copy.truncate(&last.path, last.frames[0].start + 5).unwrap();
    assert!(open(&copy, RecoveryMode::PointInTime).is_ok());
    let (_wal, rec) = open(&mem, RecoveryMode::Strict).expect("original is intact");
    assert_eq!(rec.report.records, 30);
    for seg in &log.segments {
        assert_eq!(&**mem.read(&seg.path).unwrap(), &seg.image[..]);
    }
}
