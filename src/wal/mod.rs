//! The write-ahead log: segmented, checksummed, group-committed, and the only
//! place wconf's state becomes durable.
//!
//! - `format`: the bytes on disk (segment header, record frame).
//! - `storage`: the file-system trait, the real backend and the in-memory
//!   backend that simulates crashes.
//! - `segment`: segment names and the creation of a segment.
//! - `reader`: walking frames and validating a directory of segments.
//! - `recovery`: deciding what a damaged log means, repairing a torn tail,
//!   and handing the records to replay.
//! - `writer`: the single writer thread with group commit.
//! - `gc`: deleting closed segments a durable snapshot covers.
//!
//! See `docs/wal-format.md` for the format and the crash cases.

pub mod format;
pub mod gc;
pub mod lockfile;
pub mod reader;
pub mod recovery;
pub mod segment;
pub mod storage;
mod telemetry;
pub mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use format::{FrameDamage, HeaderError, KIND_SKIPPABLE};
pub use recovery::{Recovered, RecoveryMode, RecoveryReport, Truncation};
pub use telemetry::{
    BucketCounts, TelemetrySnapshot, BYTES_PER_SYNC_BOUNDS, RECORDS_PER_SYNC_BOUNDS, SYNC_US_BOUNDS,
};
pub use writer::{Appended, DurableWait, OnDurable, Wal};

/// The largest `batch_bytes_max` accepted. It keeps a batch's record count,
/// which frames carry as a u32 `batch_index`, far below `u32::MAX`.
pub const BATCH_BYTES_LIMIT: usize = 1 << 30;

/// The default `queue_len_max`.
pub const QUEUE_LEN_MAX_DEFAULT: usize = 65_536;

/// Bounds and knobs of one WAL. Every queue and buffer the writer keeps is
/// bounded by one of these.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of a segment file. A batch is cut short where the segment ends;
    /// the segment rolls when the next batch's first record does not fit. A
    /// reopened last segment is grown to this size if it is smaller.
    pub segment_bytes: u64,
    /// Largest payload one record may carry.
    pub record_bytes_max: usize,
    /// A batch stops growing at this many bytes of frames (a single record
    /// larger than this is written alone).
    pub batch_bytes_max: usize,
    /// Appends waiting for the writer, at most; then `try_append` answers
    /// `Full` and `append` waits.
    pub queue_len_max: usize,
    /// Payload bytes waiting for the writer, at most.
    pub queue_bytes_max: usize,
    /// `wait_durable` callers parked at once, at most; past it they get
    /// `Full`. Separate from the append queue: readers waiting for a sync
    /// are not appends.
    pub durable_waiters_max: usize,
    pub recovery_mode: RecoveryMode,
    /// A sync slower than this is logged with `warn!`.
    pub slow_sync_warn_ms: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: 64 << 20,
            record_bytes_max: 16 << 20,
            batch_bytes_max: 4 << 20,
            queue_len_max: QUEUE_LEN_MAX_DEFAULT,
            queue_bytes_max: 64 << 20,
            durable_waiters_max: 65_536,
            recovery_mode: RecoveryMode::default(),
            slow_sync_warn_ms: 1_000,
        }
    }
}

impl WalOptions {
    /// Checks that the bounds fit together: the largest record must fit in
    /// an empty segment and in the queue.
    pub fn validate(&self) -> Result<(), WalError> {
        let frame_max = format::frame_bytes(self.record_bytes_max) as u64;
        let invalid = |msg: String| Err(WalError::InvalidOptions(msg));
        if self.batch_bytes_max > BATCH_BYTES_LIMIT {
            return invalid(format!(
                "batch_bytes_max {} exceeds {BATCH_BYTES_LIMIT}",
                self.batch_bytes_max
            ));
        }
        if self.record_bytes_max == 0
            || self.batch_bytes_max == 0
            || self.queue_len_max == 0
            || self.durable_waiters_max == 0
        {
            return invalid(
                "record_bytes_max, batch_bytes_max, queue_len_max and durable_waiters_max must be > 0"
                    .into(),
            );
        }
        if frame_max > format::FRAME_LEN_MAX as u64 {
            return invalid(format!(
                "record_bytes_max {} exceeds the format",
                self.record_bytes_max
            ));
        }
        if (format::SEGMENT_HEADER_LEN as u64) + frame_max > self.segment_bytes {
            return invalid(format!(
                "segment_bytes {} cannot hold one record of record_bytes_max {}",
                self.segment_bytes, self.record_bytes_max
            ));
        }
        if self.queue_bytes_max < self.record_bytes_max {
            return invalid(format!(
                "queue_bytes_max {} is below record_bytes_max {}",
                self.queue_bytes_max, self.record_bytes_max
            ));
        }
        Ok(())
    }
}

/// What is wrong at a place in the log. The location (file, offset, LSN)
/// travels beside it in `WalError::Corrupted` and `Truncation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// A frame that does not validate.
    Frame(FrameDamage),
    /// A zero length field where non-zero bytes follow later in the file.
    GarbageAfterEnd,
    /// A valid frame with the wrong LSN.
    LsnMismatch { expected: u64, found: u64 },
    /// A valid frame whose batch position does not follow the previous frame.
    BatchMismatch { expected: u32, found: u32 },
    /// The log ends inside a batch: its last frame is not marked batch end.
    IncompleteBatch,
    /// A segment header that does not validate.
    Header(HeaderError),
    /// The header's first LSN is not the one in the file name.
    Misnamed { name_lsn: u64, header_lsn: u64 },
    /// The LSN after the previous segment is not where this one starts.
    MissingSegment { expected_lsn: u64, found_lsn: u64 },
    /// Segment sequence numbers do not go up by one.
    OutOfOrder { expected_seq: u64, found_seq: u64 },
    /// The header's previous-segment CRC does not match that segment's last frame.
    ChainBroken { expected_crc: u32, found_crc: u32 },
}

/// Broad classes of damage, as an operator (and `wal-dump verify`) sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageClass {
    /// Damaged bytes inside a segment.
    Corrupt,
    /// A segment missing, misnamed or out of order.
    Sequence,
}

impl Damage {
    pub fn class(&self) -> DamageClass {
        match self {
            Damage::Misnamed { .. }
            | Damage::MissingSegment { .. }
            | Damage::OutOfOrder { .. }
            | Damage::ChainBroken { .. } => DamageClass::Sequence,
            _ => DamageClass::Corrupt,
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Frame(FrameDamage::ShortHeader) => write!(f, "partial frame header"),
            Damage::Frame(FrameDamage::LengthTooSmall { frame_len }) => {
                write!(f, "frame length {frame_len} below the header size")
            }
            Damage::Frame(FrameDamage::LengthPastEnd { frame_len }) => {
                write!(f, "frame length {frame_len} runs past the end of the file")
            }
            Damage::Frame(FrameDamage::BadCrc { stored, computed }) => {
                write!(f, "frame CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Damage::Frame(FrameDamage::BadKindOrFlags { kind, flags }) => {
                write!(f, "invalid kind {kind:#06x} or flags {flags:#06x}")
            }
            Damage::Frame(FrameDamage::NonZeroPadding) => write!(f, "non-zero frame padding"),
            Damage::GarbageAfterEnd => write!(f, "non-zero bytes after the end of written data"),
            Damage::LsnMismatch { expected, found } => {
                write!(f, "LSN {found} where {expected} was expected")
            }
            Damage::BatchMismatch { expected, found } => {
                write!(f, "batch index {found} where {expected} was expected")
            }
            Damage::IncompleteBatch => write!(f, "log ends inside a group-commit batch"),
            Damage::Header(h) => write!(f, "bad segment header: {h:?}"),
            Damage::Misnamed { name_lsn, header_lsn } => {
                write!(f, "file named for LSN {name_lsn} holds a segment starting at {header_lsn}")
            }
            Damage::MissingSegment { expected_lsn, found_lsn } => {
                write!(f, "segment gap: expected LSN {expected_lsn}, next segment starts at {found_lsn}")
            }
            Damage::OutOfOrder { expected_seq, found_seq } => {
                write!(f, "segment sequence {found_seq} where {expected_seq} was expected")
            }
            Damage::ChainBroken { expected_crc, found_crc } => write!(
                f,
                "segment chain broken: previous tail CRC {expected_crc:#010x}, header says {found_crc:#010x}"
            ),
        }
    }
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WalError {
    /// Damage that recovery will not repair: the log refuses to open.
    Corrupted {
        segment: PathBuf,
        offset: u64,
        lsn: u64,
        kind: Damage,
    },
    /// A segment written by a format version this build cannot read.
    UnsupportedVersion {
        segment: PathBuf,
        version: u32,
    },
    Io {
        op: &'static str,
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// The append queue is at `queue_len_max` or `queue_bytes_max`.
    Full {
        queue_len: usize,
        queue_bytes: usize,
    },
    RecordTooLarge {
        bytes: usize,
        max: usize,
    },
    /// An earlier write or sync failed; this log accepts nothing more.
    Poisoned {
        cause: Arc<str>,
    },
    /// Another process owns the directory.
    Locked {
        path: PathBuf,
        holder_pid: Option<u32>,
    },
    InvalidOptions(String),
    /// The log was shut down.
    Closed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> WalError {
        WalError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Corrupted {
                segment,
                offset,
                lsn,
                kind,
            } => write!(
                f,
                "corrupt WAL, refusing to open: {} at offset {offset} (LSN {lsn}): {kind}",
                segment.display()
            ),
            WalError::UnsupportedVersion { segment, version } => write!(
                f,
                "{} has WAL format version {version}; this build reads version {}",
                segment.display(),
                format::FORMAT_VERSION
            ),
            WalError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            WalError::Full {
                queue_len,
                queue_bytes,
            } => {
                write!(
                    f,
                    "WAL queue full ({queue_len} records, {queue_bytes} bytes waiting)"
                )
            }
            WalError::RecordTooLarge { bytes, max } => {
                write!(f, "record of {bytes} bytes exceeds record_bytes_max {max}")
            }
            WalError::Poisoned { cause } => write!(f, "WAL stopped after an I/O error: {cause}"),
            WalError::Locked {
                path,
                holder_pid: Some(pid),
            } => {
                write!(f, "{} is locked by process {pid}", path.display())
            }
            WalError::Locked {
                path,
                holder_pid: None,
            } => {
                write!(f, "{} is locked by another process", path.display())
            }
            WalError::InvalidOptions(msg) => write!(f, "invalid WAL options: {msg}"),
            WalError::Closed => write!(f, "WAL is closed"),
        }
    }
}

impl std::error::Error for WalError {}
