//! Recovery: validates every segment, decides what a problem means under the
//! chosen `RecoveryMode`, cuts a torn tail (keeping the cut bytes in a
//! `.broken` side file), and hands the surviving records to replay.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::format::{read_frame, FrameRead, SegmentHeader, SEGMENT_HEADER_LEN};
use super::reader::{
    list_segments, scan_segment, segment_header, Frames, Problem, Record, SegmentFile, SegmentScan,
};
use super::segment::{broken_path, is_temp_name, parse_segment_name};
use super::storage::Storage;
use super::{Damage, WalError, WalOptions};
use crate::failpoints::failpoint;

/// What recovery may do about damage. Chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Cut a torn or incomplete tail of the last segment; refuse anything else.
    #[default]
    TolerateTornTail,
    /// Refuse any anomaly, a torn tail included.
    Strict,
    /// Stop at the first bad record anywhere and drop everything after it.
    /// Loses data by design: only an operator should ask for it.
    PointInTime,
}

impl RecoveryMode {
    pub const NAMES: [&'static str; 3] = ["tolerate-torn-tail", "strict", "point-in-time"];
}

impl fmt::Display for RecoveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecoveryMode::TolerateTornTail => "tolerate-torn-tail",
            RecoveryMode::Strict => "strict",
            RecoveryMode::PointInTime => "point-in-time",
        })
    }
}

impl FromStr for RecoveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<RecoveryMode, String> {
        match s {
            "tolerate-torn-tail" => Ok(RecoveryMode::TolerateTornTail),
            "strict" => Ok(RecoveryMode::Strict),
            "point-in-time" => Ok(RecoveryMode::PointInTime),
            _ => Err(format!(
                "unknown recovery mode {s:?}; expected one of {:?}",
                Self::NAMES
            )),
        }
    }
}

/// What recovery cut, and where the cut bytes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub segment: PathBuf,
    /// Where the damage was found.
    pub damage_offset: u64,
    pub damage: Damage,
    /// Where the log now ends in `segment`.
    pub cut_offset: u64,
    /// The first LSN dropped.
    pub first_lsn_dropped: u64,
    /// The highest LSN seen in the dropped bytes, if any frame there was readable.
    pub last_lsn_dropped: Option<u64>,
    /// Non-zero bytes dropped (preallocated zeros are not counted).
    pub bytes_dropped: u64,
    /// Side files holding the dropped bytes, and whole segments set aside.
    pub broken_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub mode: RecoveryMode,
    pub segments: usize,
    pub records: u64,
    /// Bytes of frames replayed, padding included.
    pub bytes: u64,
    /// The first LSN in the log (the next LSN when the log is empty).
    pub first_lsn: u64,
    /// The last LSN in the log; `first_lsn - 1` when it is empty.
    pub last_lsn: u64,
    pub truncation: Option<Truncation>,
    pub removed_temp_files: Vec<PathBuf>,
    pub elapsed: Duration,
}

/// The validated log, ready for replay. Dropping it releases the maps.
pub struct Recovered {
    pub report: RecoveryReport,
    segments: Vec<(SegmentFile, usize)>,
    tail: Option<Tail>,
}

/// Where the writer continues.
pub(crate) struct Tail {
    pub segment: Option<TailSegment>,
    pub next_lsn: u64,
    pub next_seq: u64,
    pub last_crc: u32,
}

pub(crate) struct TailSegment {
    pub path: PathBuf,
    pub len: u64,
    pub write_offset: u64,
}

impl Recovered {
    /// Every record of the recovered log, in LSN order.
    pub fn records(&self) -> impl Iterator<Item = Result<Record<'_>, WalError>> + '_ {
        self.records_after(0)
    }

    /// The records after `lsn`, in LSN order. Segments whose every record
    /// is at or below `lsn` (the next segment starts at or below `lsn + 1`)
    /// are not walked at all; within the first segment walked, earlier
    /// records are read and passed over.
    pub fn records_after(
        &self,
        lsn: u64,
    ) -> impl Iterator<Item = Result<Record<'_>, WalError>> + '_ {
        let firsts: Vec<u64> = self.segments.iter().map(|(f, _)| f.name_lsn).collect();
        let skip = firsts
            .iter()
            .skip(1)
            .take_while(|&&next| next <= lsn.saturating_add(1))
            .count();
        self.segments[skip..].iter().flat_map(move |(file, end)| {
            Frames::new(&file.view, *end)
                .map(move |r| {
                    r.map_err(|e| WalError::Corrupted {
                        segment: file.path.clone(),
                        offset: e.offset,
                        lsn: e.lsn,
                        kind: e.damage,
                    })
                })
                .filter(move |r| r.as_ref().map_or(true, |r| r.lsn > lsn))
        })
    }

    pub(crate) fn take_tail(&mut self) -> Tail {
        self.tail.take().expect("tail taken once")
    }
}

/// The first problem in a directory of segments, and what was read before it.
pub struct DirScan {
    pub segments: Vec<SegmentFile>,
    /// Scans of the segments up to the first problem (one per segment whose
    /// header was readable).
    pub scans: Vec<SegmentScan>,
    /// The index of the segment with the first problem, and the problem.
    pub problem: Option<(usize, Problem)>,
}

impl DirScan {
    /// True when the first problem can only be the torn write of the last batch.
    pub fn problem_is_torn_tail(&self) -> bool {
        match &self.problem {
            Some((i, p)) => {
                *i + 1 == self.segments.len()
                    && p.tail_only
                    && p.offset >= SEGMENT_HEADER_LEN as u64
                    && !matches!(
                        p.damage,
                        Damage::LsnMismatch { .. } | Damage::BatchMismatch { .. }
                    )
            }
            None => false,
        }
    }
}

/// What is wrong, if anything, with a segment whose header follows the
/// segment that ended with `(segment_seq, next_lsn, last_crc)`.
pub fn chain_damage(prev: (u64, u64, u32), header: &SegmentHeader) -> Option<Damage> {
    let (seq, next_lsn, last_crc) = prev;
    if header.first_lsn > next_lsn || header.segment_seq > seq + 1 {
        Some(Damage::MissingSegment {
            expected_lsn: next_lsn,
            found_lsn: header.first_lsn,
        })
    } else if header.first_lsn < next_lsn || header.segment_seq != seq + 1 {
        Some(Damage::OutOfOrder {
            expected_seq: seq + 1,
            found_seq: header.segment_seq,
        })
    } else if header.prev_crc != last_crc {
        Some(Damage::ChainBroken {
            expected_crc: last_crc,
            found_crc: header.prev_crc,
        })
    } else {
        None
    }
}

/// Validates every segment in `dir`, stopping at the first problem. A
/// segment of an unknown format version is an error, not a problem.
pub fn scan_dir(storage: &dyn Storage, dir: &Path) -> Result<DirScan, WalError> {
    scan_dir_with_progress(storage, dir, &mut |_| {})
}

/// As [`scan_dir`], calling `progress` with each segment file's length once
/// that segment is validated, so a tool can draw a byte-accurate bar over a
/// long scan.
pub fn scan_dir_with_progress(
    storage: &dyn Storage,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<DirScan, WalError> {
    let segments = list_segments(storage, dir)?;
    let mut scans: Vec<SegmentScan> = Vec::with_capacity(segments.len());
    let mut problem = None;
    for (i, file) in segments.iter().enumerate() {
        failpoint!("recovery::scan::segment");
        let prev = scans
            .last()
            .map(|s| (s.header.segment_seq, s.next_lsn, s.last_crc));
        let expected_lsn = prev.map_or(file.name_lsn, |p| p.1);
        let at_start = |damage| Problem {
            offset: 0,
            lsn: expected_lsn,
            damage,
            cut_offset: 0,
            cut_lsn: expected_lsn,
            tail_only: false,
            lsn_max_after: None,
            data_end: file.view.len() as u64,
        };
        let header = match segment_header(file) {
            Ok(h) => h,
            Err((_, Some(unsupported))) => return Err(unsupported),
            Err((damage, None)) => {
                problem = Some((i, at_start(damage)));
                break;
            }
        };
        if let Some(prev) = prev {
            let damage = chain_damage(prev, &header);
            if let Some(damage) = damage {
                problem = Some((i, at_start(damage)));
                break;
            }
        }
        let scan = scan_segment(&file.view, header);
        progress(file.view.len() as u64);
        let found = scan.problem;
        scans.push(scan);
        if let Some(p) = found {
            problem = Some((i, p));
            break;
        }
    }
    Ok(DirScan {
        segments,
        scans,
        problem,
    })
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |e| WalError::io(op, path, e)
}

/// Makes durable whatever an earlier process of this boot left in the page
/// cache: segment names whose directory sync never ran (it died between a
/// rename and the sync) and segment data whose fdatasync never ran. Without
/// this, a restart could append to and acknowledge records on top of state
/// that a power loss would still take back.
fn sync_existing(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    storage.sync_dir(dir).map_err(io("fsync directory", dir))?;
    let names = storage.list(dir).map_err(io("list", dir))?;
    for name in names.iter().filter(|n| parse_segment_name(n).is_some()) {
        let path = dir.join(name);
        let mut file = storage.open_write(&path).map_err(io("open", &path))?;
        file.sync_all().map_err(io("fsync", &path))?;
    }
    failpoint!("recovery::sync_existing::after");
    Ok(())
}

/// The error for a log refused at problem `p` in `segment`.
fn refused(segment: PathBuf, p: &Problem) -> WalError {
    WalError::Corrupted {
        segment,
        offset: p.offset,
        lsn: p.lsn,
        kind: p.damage,
    }
}

fn remove_temp_files(storage: &dyn Storage, dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let names = storage
        .list(dir)
        .map_err(|e| WalError::io("list", dir, e))?;
    let mut removed = vec![];
    for name in names.into_iter().filter(|n| is_temp_name(n)) {
        // A segment that was being created when the process died: its rename
        // never happened, so nothing in it was ever acknowledged.
        let path = dir.join(name);
        failpoint!(
            "recovery::remove_temp::before",
            crate::failpoints::wal_fault("remove", &path)
        );
        storage
            .remove(&path)
            .map_err(|e| WalError::io("remove", &path, e))?;
        tracing::info!(path = %path.display(), "removed unfinished segment");
        removed.push(path);
    }
    if !removed.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(|e| WalError::io("fsync directory", dir, e))?;
    }
    Ok(removed)
}

/// The highest LSN of the readable frames at the start of a segment image.
fn last_readable_lsn(view: &[u8]) -> Option<u64> {
    let mut off = SEGMENT_HEADER_LEN;
    let mut last = None;
    while let FrameRead::Frame { header, .. } = read_frame(view, off) {
        last = Some(header.lsn);
        off += header.padded_len();
    }
    last
}

/// Validates the log in `dir` and applies `options.recovery_mode` to what it
/// finds. On success the directory holds exactly the returned log: a torn
/// tail is cut and zeroed, so the writer leaves nothing stale behind it.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    options: &WalOptions,
) -> Result<Recovered, WalError> {
    let started = Instant::now();
    let mode = options.recovery_mode;
    storage
        .create_dir_all(dir)
        .map_err(|e| WalError::io("create directory", dir, e))?;
    sync_existing(storage, dir)?;
    let mut scan = scan_dir(storage, dir)?;
    let mut truncation = None;
    if let Some((i, p)) = scan.problem {
        let torn = scan.problem_is_torn_tail();
        let path = scan.segments[i].path.clone();
        let refuse = match mode {
            RecoveryMode::TolerateTornTail => !torn,
            RecoveryMode::Strict => true,
            RecoveryMode::PointInTime => false,
        };
        if refuse {
            return Err(refused(path, &p));
        }
        truncation = Some(cut(storage, dir, &mut scan, i, &p, torn)?);
    }
    // Only now, with the mode's verdict in and the format version known,
    // may recovery change the directory.
    let removed_temp_files = remove_temp_files(storage, dir)?;
    let DirScan {
        segments, scans, ..
    } = scan;
    // Segments whose scan is complete are the log; a segment set aside by a
    // cut has no scan (or was removed from the list).
    let kept: Vec<(SegmentFile, SegmentScan)> = segments.into_iter().zip(scans).collect();
    let tail = match kept.last() {
        Some((file, s)) => Tail {
            segment: Some(TailSegment {
                path: file.path.clone(),
                len: file.view.len() as u64,
                write_offset: s.end,
            }),
            next_lsn: s.next_lsn,
            next_seq: s.header.segment_seq + 1,
            last_crc: s.last_crc,
        },
        None => Tail {
            segment: None,
            next_lsn: truncation.as_ref().map_or(1, |t| t.first_lsn_dropped),
            next_seq: 0,
            last_crc: 0,
        },
    };
    let records = kept.iter().map(|(_, s)| s.records).sum();
    let bytes = kept
        .iter()
        .map(|(_, s)| s.end - SEGMENT_HEADER_LEN as u64)
        .sum();
    let first_lsn = kept
        .first()
        .map_or(tail.next_lsn, |(_, s)| s.header.first_lsn);
    let report = RecoveryReport {
        mode,
        segments: kept.len(),
        records,
        bytes,
        first_lsn,
        last_lsn: tail.next_lsn - 1,
        truncation,
        removed_temp_files,
        elapsed: started.elapsed(),
    };
    let segments = kept.into_iter().map(|(f, s)| (f, s.end as usize)).collect();
    Ok(Recovered {
        report,
        segments,
        tail: Some(tail),
    })
}

/// Cuts a torn tail of the log in `dir` exactly as `Wal::open` does under
/// `RecoveryMode::TolerateTornTail` (the same `cut`), and refuses anything
/// else with `WalError::Corrupted`. `Ok(None)`: nothing to cut. With
/// `dry_run` nothing changes and the result says what would be cut. Without
/// it the caller must hold the directory's `DirLock`. No CRC is recomputed:
/// the cut only drops bytes, and keeps them in a `.broken` side file.
pub fn repair_torn_tail(
    storage: &dyn Storage,
    dir: &Path,
    dry_run: bool,
) -> Result<Option<Truncation>, WalError> {
    if !dry_run {
        sync_existing(storage, dir)?;
    }
    let mut scan = scan_dir(storage, dir)?;
    let Some((i, p)) = scan.problem else {
        return Ok(None);
    };
    if !scan.problem_is_torn_tail() {
        return Err(refused(scan.segments[i].path.clone(), &p));
    }
    if dry_run {
        plan_cut(storage, &scan, i, &p).map(Some)
    } else {
        cut(storage, dir, &mut scan, i, &p, true).map(Some)
    }
}

/// An operator's point-in-time cut of a damaged log: the log afterwards ends
/// just before `lsn`, which must start a group-commit batch at or before the
/// end of the valid records (so the cut never leaves half a batch, which
/// recovery would cut again). Everything from `lsn` on goes to `.broken`
/// side files through the same `cut` as `RecoveryMode::PointInTime`. The
/// returned `damage` and `damage_offset` are those of the first damage when
/// the cut is in its segment at its cut point; otherwise `damage_offset` is
/// the asked cut and `damage` still names the first damage, the reason for
/// the cut. A clean log is refused: this repairs, it does not edit history.
pub fn truncate_before(
    storage: &dyn Storage,
    dir: &Path,
    lsn: u64,
    dry_run: bool,
) -> Result<Truncation, WalError> {
    if !dry_run {
        sync_existing(storage, dir)?;
    }
    let mut scan = scan_dir(storage, dir)?;
    let Some((pi, pp)) = scan.problem else {
        return Err(WalError::InvalidOptions(format!(
            "the log in {} is clean; a cut at LSN {lsn} would only drop good records",
            dir.display()
        )));
    };
    let (i, p) = if lsn == pp.cut_lsn {
        (pi, pp)
    } else {
        let found = scan.scans.iter().enumerate().find_map(|(j, s)| {
            let view = &scan.segments[j].view;
            Frames::new(view, s.end as usize)
                .filter_map(Result::ok)
                .find(|r| r.lsn == lsn)
                .map(|r| (j, r.offset, r.header.batch_index))
        });
        let Some((j, offset, batch_index)) = found else {
            return Err(WalError::InvalidOptions(format!(
                "LSN {lsn} is not a valid record of the log (the first damage drops LSN {} on)",
                pp.cut_lsn
            )));
        };
        if batch_index != 0 {
            return Err(WalError::InvalidOptions(format!(
                "LSN {lsn} is inside a group-commit batch that starts at LSN {}",
                lsn - u64::from(batch_index)
            )));
        }
        let view = &scan.segments[j].view;
        let data_end = view.iter().rposition(|&b| b != 0).map_or(0, |k| k + 1) as u64;
        let lsn_max_after = if j == pi {
            pp.lsn_max_after.max(Some(scan.scans[j].next_lsn - 1))
        } else {
            last_readable_lsn(view)
        };
        let p = Problem {
            offset,
            lsn,
            damage: pp.damage,
            cut_offset: offset,
            cut_lsn: lsn,
            tail_only: false,
            lsn_max_after,
            data_end: data_end.max(offset),
        };
        (j, p)
    };
    if dry_run {
        plan_cut(storage, &scan, i, &p)
    } else {
        cut(storage, dir, &mut scan, i, &p, false)
    }
}

/// What `cut` does at problem `p` in segment `i`, computed without changing
/// anything: `cut` runs this plan, and a dry run prints it.
fn plan_cut(
    storage: &dyn Storage,
    scan: &DirScan,
    i: usize,
    p: &Problem,
) -> Result<Truncation, WalError> {
    let whole = p.cut_offset < SEGMENT_HEADER_LEN as u64;
    let target = &scan.segments[i];
    let mut last_lsn_dropped = p.lsn_max_after;
    let mut bytes_dropped = 0u64;
    let mut broken_files = vec![];
    if whole {
        bytes_dropped += target.view.len() as u64;
        last_lsn_dropped = last_lsn_dropped.max(last_readable_lsn(&target.view));
        broken_files.push(broken_path(storage, &target.path)?);
    } else {
        let dropped = p.data_end.max(p.cut_offset) - p.cut_offset;
        if dropped > 0 {
            bytes_dropped += dropped;
            broken_files.push(broken_path(storage, &target.path)?);
        }
    }
    for file in &scan.segments[i + 1..] {
        bytes_dropped += file.view.len() as u64;
        last_lsn_dropped = last_lsn_dropped.max(last_readable_lsn(&file.view));
        broken_files.push(broken_path(storage, &file.path)?);
    }
    Ok(Truncation {
        segment: target.path.clone(),
        damage_offset: p.offset,
        damage: p.damage,
        cut_offset: if whole { 0 } else { p.cut_offset },
        first_lsn_dropped: p.cut_lsn,
        last_lsn_dropped,
        bytes_dropped,
        broken_files,
    })
}

/// Cuts the log at problem `p` in segment `i`: the dropped bytes of that
/// segment go to a durable side file first, then the segment is shortened
/// and zero-filled back to its length; every later segment is set aside
/// whole. Afterwards `scan` describes the log that remains.
fn cut(
    storage: &dyn Storage,
    dir: &Path,
    scan: &mut DirScan,
    i: usize,
    p: &Problem,
    torn: bool,
) -> Result<Truncation, WalError> {
    // The plan names every side file before anything changes, so a dry run
    // (`plan_cut` alone) reports exactly what this does.
    let t = plan_cut(storage, scan, i, p)?;
    let mut sides = t.broken_files.iter();
    let mut next_side = || sides.next().expect("plan_cut names every side file");
    let whole = p.cut_offset < SEGMENT_HEADER_LEN as u64;
    let sync_dir = || storage.sync_dir(dir).map_err(io("fsync directory", dir));

    let later: Vec<SegmentFile> = scan.segments.drain(i + 1..).collect();
    let target = scan.segments.pop().expect("problem segment exists");
    let seg_path = target.path.clone();
    if whole {
        let side = next_side();
        drop(target);
        storage
            .rename(&seg_path, side)
            .map_err(io("rename", &seg_path))?;
        sync_dir()?;
        scan.scans.truncate(i);
    } else {
        let len = target.view.len() as u64;
        let dropped =
            target.view[p.cut_offset as usize..p.data_end.max(p.cut_offset) as usize].to_vec();
        // The maps must go before the file shrinks: touching a mapped page
        // past the end of a file raises SIGBUS.
        drop(target);
        if !dropped.is_empty() {
            let side = next_side();
            failpoint!(
                "recovery::side_file::before",
                crate::failpoints::wal_fault("create", side)
            );
            let mut f = storage.create_new(side).map_err(io("create", side))?;
            f.write_all_at(&dropped, 0).map_err(io("write", side))?;
            f.sync_all().map_err(io("fsync", side))?;
            sync_dir()?;
            let mut seg = storage
                .open_write(&seg_path)
                .map_err(io("open", &seg_path))?;
            failpoint!(
                "recovery::truncate::before",
                crate::failpoints::wal_fault("truncate", &seg_path)
            );
            seg.set_len(p.cut_offset)
                .map_err(io("truncate", &seg_path))?;
            seg.allocate(len).map_err(io("preallocate", &seg_path))?;
            failpoint!(
                "recovery::truncate_sync::before",
                crate::failpoints::wal_fault("fsync", &seg_path)
            );
            seg.sync_all().map_err(io("fsync", &seg_path))?;
        }
        let view = storage.read(&seg_path).map_err(io("read", &seg_path))?;
        scan.segments.push(SegmentFile {
            path: seg_path.clone(),
            name_lsn: scan.scans[i].header.first_lsn,
            view,
        });
        let s = &mut scan.scans[i];
        s.end = p.cut_offset;
        s.problem = None;
    }
    let set_aside_later = !later.is_empty();
    for file in later {
        let side = next_side();
        let path = file.path.clone();
        drop(file);
        storage.rename(&path, side).map_err(io("rename", &path))?;
    }
    if set_aside_later {
        sync_dir()?;
    }
    let what = if torn {
        "torn tail cut: the last batch was never acknowledged; its bytes are kept in a side file"
    } else {
        "point-in-time cut: every record from the first damage on was dropped and set aside"
    };
    tracing::warn!(
        segment = %t.segment.display(),
        damage_offset = t.damage_offset,
        damage = %t.damage,
        cut_offset = t.cut_offset,
        first_lsn_dropped = t.first_lsn_dropped,
        last_lsn_dropped = ?t.last_lsn_dropped,
        bytes_dropped = t.bytes_dropped,
        broken_files = ?t.broken_files,
        "{what}"
    );
    Ok(t)
}
