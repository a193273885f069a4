//! Opening what the user named (a data directory, or segment files) through
//! read-only maps, and walking its valid records in LSN order.
//!
//! A live daemon's directory is safe to read: the writer only appends past
//! the end of the last complete batch, and every walk here stops at that end
//! (`SegmentScan::end`), so the batch being written and the preallocated
//! zeros after it are never decoded. A batch caught half-written looks like a
//! torn tail, which the walk reports and stops at.

use std::path::{Path, PathBuf};

use wconf::wal::format::{SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use wconf::wal::reader::{
    scan_segment, segment_header, Frames, Problem, Record, SegmentFile, SegmentScan,
};
use wconf::wal::recovery::{scan_dir_with_progress, DirScan};
use wconf::wal::segment::parse_segment_name;
use wconf::wal::storage::{StdStorage, Storage};
use wconf::wal::{DamageClass, HeaderError, WalError};

use crate::exit;
use crate::progress::Progress;

/// A failure that stops a subcommand before it prints anything useful.
#[derive(Debug)]
pub struct Fatal {
    pub code: u8,
    pub message: String,
}

impl Fatal {
    pub fn usage(message: impl Into<String>) -> Fatal {
        Fatal {
            code: exit::USAGE_OR_IO,
            message: message.into(),
        }
    }
}

/// Where the walk stopped early, and what that means.
pub struct Stop {
    pub segment: PathBuf,
    pub problem: Problem,
    /// The damage can only be the torn write of the last batch (or a batch
    /// a live writer is writing right now): nothing durable lies beyond it.
    pub torn_tail: bool,
}

impl Stop {
    /// The exit code a reading subcommand ends with after this stop: a torn
    /// tail is the normal end of a live or crashed log, anything else is not.
    pub fn exit_code(&self) -> u8 {
        if self.torn_tail {
            exit::CLEAN
        } else if self.problem.damage.class() == DamageClass::Sequence {
            exit::SEQUENCE
        } else {
            exit::CORRUPT
        }
    }

    pub fn describe(&self) -> String {
        let what = format!(
            "{} at offset {} (LSN {}): {}",
            self.segment.display(),
            self.problem.offset,
            self.problem.lsn,
            self.problem.damage
        );
        if self.torn_tail {
            format!(
                "log ends in a torn or in-flight batch at {what}; records up to LSN {} are shown",
                self.problem.cut_lsn - 1
            )
        } else {
            format!("log is damaged at {what}; records before it are shown")
        }
    }
}

/// The readable part of a log: segments and their scans, in order.
pub struct Log {
    pub segments: Vec<SegmentFile>,
    /// One per segment whose header was readable, up to the first problem.
    pub scans: Vec<SegmentScan>,
    pub stop: Option<Stop>,
}

/// One valid record with where it lives.
pub struct Located<'a> {
    pub segment: &'a SegmentFile,
    pub record: Record<'a>,
}

impl Log {
    /// Opens `inputs`: one directory, or one or more segment files; each
    /// segment's bytes count on `progress` once validated.
    pub fn open(inputs: &[PathBuf], progress: &Progress) -> Result<Log, Fatal> {
        match inputs {
            [] => Err(Fatal::usage("give a data directory or segment files")),
            [dir] if dir.is_dir() => Log::open_dir(dir, progress),
            files => Log::open_files(files, progress),
        }
    }

    fn open_dir(dir: &Path, progress: &Progress) -> Result<Log, Fatal> {
        let scan = scan_dir_with_progress(&StdStorage, dir, &mut |b| progress.inc(b))
            .map_err(fatal_wal)?;
        let torn_tail = scan.problem_is_torn_tail();
        let DirScan {
            segments,
            scans,
            problem,
        } = scan;
        let stop = problem.map(|(i, problem)| Stop {
            segment: segments[i].path.clone(),
            problem,
            torn_tail,
        });
        Ok(Log {
            segments,
            scans,
            stop,
        })
    }

    /// Segment files named one by one are read each on its own: the chain
    /// between them is `verify`'s business, and a user may pick any subset.
    fn open_files(files: &[PathBuf], progress: &Progress) -> Result<Log, Fatal> {
        let mut segments = vec![];
        let mut scans = vec![];
        let mut stop = None;
        for path in files {
            if path.is_dir() {
                return Err(Fatal::usage(format!(
                    "{} is a directory; give one directory or only segment files",
                    path.display()
                )));
            }
            if !path.is_file() {
                return Err(Fatal::usage(format!(
                    "{}: no such file or directory",
                    path.display()
                )));
            }
            let view = StdStorage
                .read(path)
                .map_err(|e| Fatal::usage(format!("{}: {e}", path.display())))?;
            let header = match SegmentHeader::decode(&view) {
                Ok(h) => h,
                Err(HeaderError::TooShort { .. } | HeaderError::BadMagic) => {
                    return Err(Fatal::usage(format!(
                        "{} is not a wconf WAL segment (no WCONFWAL header)",
                        path.display()
                    )))
                }
                Err(HeaderError::UnsupportedVersion { version }) => {
                    return Err(fatal_wal(WalError::UnsupportedVersion {
                        segment: path.clone(),
                        version,
                    }))
                }
                // Damage in a real header: report it like any other damage.
                Err(_) => SegmentHeader {
                    segment_seq: 0,
                    first_lsn: 0,
                    prev_crc: 0,
                },
            };
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let file = SegmentFile {
                path: path.clone(),
                name_lsn: parse_segment_name(name).unwrap_or(header.first_lsn),
                view,
            };
            match segment_header(&file) {
                Ok(h) => {
                    let scan = scan_segment(&file.view, h);
                    progress.inc(file.view.len() as u64);
                    let problem = scan.problem;
                    scans.push(scan);
                    segments.push(file);
                    if let Some(problem) = problem {
                        stop = Some(Stop {
                            segment: path.clone(),
                            torn_tail: problem.tail_only && segments.len() == files.len(),
                            problem,
                        });
                        break;
                    }
                }
                Err((damage, _)) => {
                    stop = Some(Stop {
                        segment: path.clone(),
                        problem: Problem {
                            offset: 0,
                            lsn: file.name_lsn,
                            damage,
                            cut_offset: 0,
                            cut_lsn: file.name_lsn,
                            tail_only: false,
                            lsn_max_after: None,
                            data_end: file.view.len() as u64,
                        },
                        torn_tail: false,
                    });
                    segments.push(file);
                    break;
                }
            }
        }
        Ok(Log {
            segments,
            scans,
            stop,
        })
    }

    /// Every valid record, in order. A frame that no longer reads as it did
    /// during the scan (another process rewrote the file) ends the walk with
    /// an error.
    pub fn records(&self) -> impl Iterator<Item = Result<Located<'_>, Fatal>> + '_ {
        self.segments
            .iter()
            .zip(&self.scans)
            .flat_map(|(segment, scan)| {
                Frames::new(&segment.view, scan.end as usize).map(move |r| match r {
                    Ok(record) => Ok(Located { segment, record }),
                    Err(e) => Err(Fatal {
                        code: exit::CORRUPT,
                        message: format!(
                            "{} changed while reading, at offset {} (LSN {}): {}",
                            segment.path.display(),
                            e.offset,
                            e.lsn,
                            e.damage
                        ),
                    }),
                })
            })
    }

    /// The bytes of the valid frames, padding included: what a pass over
    /// `records()` reads.
    pub fn frame_bytes(&self) -> u64 {
        self.scans
            .iter()
            .map(|s| s.end - SEGMENT_HEADER_LEN as u64)
            .sum()
    }

    /// The last valid LSN, if there is a record at all.
    pub fn last_lsn(&self) -> Option<u64> {
        self.scans
            .iter()
            .rev()
            .find(|s| s.records > 0)
            .map(|s| s.next_lsn - 1)
    }
}

/// The CRC a frame's bytes give now: header bytes 0..20, then the payload.
pub fn computed_crc(segment: &SegmentFile, record: &Record<'_>) -> u32 {
    let off = record.offset as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.view[off..off + FRAME_HEADER_LEN - 4]);
    h.update(record.payload);
    h.finalize()
}

pub fn fatal_wal(e: WalError) -> Fatal {
    let code = match e {
        WalError::UnsupportedVersion { .. } => exit::CORRUPT,
        _ => exit::USAGE_OR_IO,
    };
    Fatal {
        code,
        message: e.to_string(),
    }
}

/// The file name of a segment, for compact output.
pub fn file_name(segment: &SegmentFile) -> String {
    segment
        .path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}
