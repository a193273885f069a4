//! Snapshots: the whole persisted [`State`] at one LSN, in its own file
//! beside the log's segments, so recovery replays only the records after it
//! and old segments can be deleted.
//!
//! - `format`: the bytes (64-byte header, codec body).
//! - this module: names, writing (temporary file, write, fsync, rename,
//!   directory fsync, all through the WAL's [`Storage`] so `MemStorage` can
//!   crash it), listing, loading (through the storage's read view, a memory
//!   map on the real file system) with fallback to an older snapshot, and
//!   retention.
//! - `writer` (daemon side): the thread that writes a copy of the state
//!   handed over by the lock actor, once its LSN is durable, then collects
//!   old snapshots and segments.
//!
//! Builds without the `daemon` feature: `wal-dump` loads snapshots too.
//!
//! What a snapshot holds is exactly what `State`'s serialization holds: the
//! config document and serial, open sessions with their TTLs, lock holders
//! with their modes and tokens, the dedup table, the next fencing token, the
//! epoch and the LSN. Waiters, the lock order and lease deadlines are live
//! only, as in the log: a waiter is a request on a connection that a restart
//! has closed, the lock order is a flag, and every lease gets a full TTL of
//! grace after a restart.

pub mod format;
pub mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{self, CodecError};
use crate::failpoints::failpoint;
use crate::state::State;
use crate::wal::segment::{lsn_name, parse_lsn_name};
use crate::wal::storage::{StdStorage, Storage, StorageFile};
use crate::wal::WalError;
pub use format::{SnapshotDamage, SnapshotHeader, SNAPSHOT_HEADER_LEN};

pub const SNAPSHOT_SUFFIX: &str = ".snap";
pub const SNAPSHOT_TEMP_SUFFIX: &str = ".snap.tmp";
/// How many snapshots are kept. The older one is the fallback when the
/// newer does not load, so segments are kept back to the older one's LSN.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Bytes written per `write_all_at` call; each chunk's write-back is started
/// as soon as it is written and waited for before the next one
/// (`StorageFile::write_behind`), so at most two chunks are ever dirty.
/// Without that, the closing fsync of a 100 MB snapshot flushed all of it at
/// once, and the log's fdatasyncs (whose extent conversions need an ext4
/// journal commit, which waits for that flush) stalled behind it: request
/// p99 went from 6.9 ms to 48.5 ms while snapshots were written. Chunks of
/// 8 MiB gave 44.8 ms, 1 MiB 12.4-12.8 ms, 256 KiB 10.1-10.2 ms
/// (`benches/run-big-config.sh`, 2 cores); a snapshot then takes ~0.1 s
/// longer.
const WRITE_CHUNK_BYTES: usize = 256 << 10;

/// `<20-digit LSN>.snap`: name order is LSN order, as for segments.
pub fn snapshot_name(lsn: u64) -> String {
    lsn_name(lsn, SNAPSHOT_SUFFIX)
}

/// The LSN a snapshot file name claims, or `None` for other files.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    parse_lsn_name(name, SNAPSHOT_SUFFIX)
}

fn is_temp_name(name: &str) -> bool {
    parse_lsn_name(name, SNAPSHOT_TEMP_SUFFIX).is_some()
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file does not validate; `offset` is where the damage is.
    Corrupt {
        path: PathBuf,
        offset: u64,
        damage: SnapshotDamage,
    },
    Io {
        op: &'static str,
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    Encode(CodecError),
    /// The log failed while the snapshot waited for its LSN to be durable.
    Wal(WalError),
    /// The snapshot writer has stopped.
    Stopped,
    /// A snapshot is already waiting to be written.
    Busy,
}

impl SnapshotError {
    fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
        move |e| SnapshotError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Corrupt {
                path,
                offset,
                damage,
            } => write!(
                f,
                "snapshot {} is corrupt at offset {offset}: {damage}",
                path.display()
            ),
            SnapshotError::Io { op, path, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            SnapshotError::Encode(e) => write!(f, "snapshot encoding: {e}"),
            SnapshotError::Wal(e) => write!(f, "snapshot abandoned, the log failed: {e}"),
            SnapshotError::Stopped => write!(f, "the snapshot writer has stopped"),
            SnapshotError::Busy => write!(f, "a snapshot is already waiting to be written"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// A snapshot file in a directory, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub lsn: u64,
    pub path: PathBuf,
}

/// The snapshot files in `dir`, oldest first (by the LSN in their names;
/// nothing is read).
pub fn list_with(storage: &dyn Storage, dir: &Path) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let names = storage.list(dir).map_err(SnapshotError::io("list", dir))?;
    let mut files: Vec<SnapshotFile> = names
        .iter()
        .filter_map(|n| {
            parse_snapshot_name(n).map(|lsn| SnapshotFile {
                lsn,
                path: dir.join(n),
            })
        })
        .collect();
    files.sort_by_key(|f| f.lsn);
    Ok(files)
}

/// [`list_with`] on the real file system.
pub fn list(dir: &Path) -> Result<Vec<SnapshotFile>, SnapshotError> {
    list_with(&StdStorage, dir)
}

/// A snapshot made durable by [`write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub lsn: u64,
    pub path: PathBuf,
    /// File size, header included.
    pub bytes: u64,
    /// Encoding the state into the body.
    pub encode: Duration,
    /// Writing, fsyncing and renaming the file, and the directory fsync.
    pub write: Duration,
}

/// Writes `state` as the snapshot of its applied LSN: temporary file, write,
/// fsync, rename, directory fsync. When this returns the snapshot is
/// durable under its name. The caller must already know that LSN is durable
/// in the log (a snapshot must never be ahead of the log it summarises).
/// A snapshot of the same LSN already there is replaced (atomically).
pub fn write(
    storage: &dyn Storage,
    dir: &Path,
    state: &State,
    created_unix_ms: u64,
) -> Result<Written, SnapshotError> {
    let started = Instant::now();
    let lsn = state.applied_lsn();
    let path = dir.join(snapshot_name(lsn));
    let tmp = dir.join(lsn_name(lsn, SNAPSHOT_TEMP_SUFFIX));
    // Left by a writer that died; only one writer runs per directory.
    if storage
        .exists(&tmp)
        .map_err(SnapshotError::io("stat", &tmp))?
    {
        storage
            .remove(&tmp)
            .map_err(SnapshotError::io("remove", &tmp))?;
    }
    failpoint!(
        "snapshot::create::before",
        crate::failpoints::snapshot_fault("create", &tmp)
    );
    let mut file = storage
        .create_new(&tmp)
        .map_err(SnapshotError::io("create", &tmp))?;
    // The body streams to the file as it is encoded, after the space for
    // the header; the header, which holds the body's length and CRC, is
    // written last, before the fsync.
    let mut body = BodyWriter {
        file: file.as_mut(),
        tmp: &tmp,
        buf: Vec::with_capacity(WRITE_CHUNK_BYTES),
        offset: SNAPSHOT_HEADER_LEN as u64,
        len: 0,
        crc: crc32fast::Hasher::new(),
        io: Duration::ZERO,
        failed: None,
    };
    let encoded = state.encode_to_write(&mut body);
    if let Some(e) = body.failed.take() {
        return Err(e);
    }
    encoded.map_err(SnapshotError::Encode)?;
    body.write_chunk()?;
    let (body_len, body_crc, offset, body_io) =
        (body.len, body.crc.finalize(), body.offset, body.io);
    let encode = started.elapsed().saturating_sub(body_io);
    let header = SnapshotHeader {
        lsn,
        body_len,
        body_crc,
        epoch: state.epoch(),
        created_unix_ms,
    };
    let io_started = Instant::now();
    failpoint!(
        "snapshot::header_write::before",
        crate::failpoints::snapshot_fault("write", &tmp)
    );
    file.write_all_at(&header.encode(), 0)
        .map_err(SnapshotError::io("write", &tmp))?;
    failpoint!(
        "snapshot::fsync::before",
        crate::failpoints::snapshot_fault("fsync", &tmp)
    );
    file.sync_all().map_err(SnapshotError::io("fsync", &tmp))?;
    drop(file);
    failpoint!(
        "snapshot::rename::before",
        crate::failpoints::snapshot_fault("rename", &tmp)
    );
    storage
        .rename(&tmp, &path)
        .map_err(SnapshotError::io("rename", &tmp))?;
    failpoint!(
        "snapshot::dir_fsync::before",
        crate::failpoints::snapshot_fault("fsync directory", dir)
    );
    storage
        .sync_dir(dir)
        .map_err(SnapshotError::io("fsync directory", dir))?;
    Ok(Written {
        lsn,
        path,
        bytes: offset,
        encode,
        write: body_io + io_started.elapsed(),
    })
}

/// The snapshot body on its way to the temporary file: the codec's output
/// collected into chunks of `WRITE_CHUNK_BYTES`, each written (with
/// write-behind) as it fills, with the running length and CRC. So a
/// snapshot never holds its whole encoded body in memory: with a 100 MB
/// config the daemon's peak RSS went from ~530 MiB (the body grown by
/// doubling, beside the state) to ~440 MiB, and to ~340 MiB, the state's
/// own, once the document's text streamed too (`State::encode_to_write`).
struct BodyWriter<'a> {
    file: &'a mut dyn StorageFile,
    tmp: &'a Path,
    buf: Vec<u8>,
    /// Where the next chunk goes in the file.
    offset: u64,
    /// Body bytes so far.
    len: u64,
    crc: crc32fast::Hasher,
    /// Time spent in writes and write-behind.
    io: Duration,
    /// Why writing stopped; the codec only sees an opaque error.
    failed: Option<SnapshotError>,
}

impl BodyWriter<'_> {
    /// Writes the chunk in hand, if any.
    fn write_chunk(&mut self) -> Result<(), SnapshotError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let tmp = self.tmp;
        failpoint!(
            "snapshot::body_write::before",
            crate::failpoints::snapshot_fault("write", tmp)
        );
        let started = Instant::now();
        self.file
            .write_all_at(&self.buf, self.offset)
            .map_err(SnapshotError::io("write", tmp))?;
        self.file
            .write_behind(self.offset, self.buf.len() as u64)
            .map_err(SnapshotError::io("sync_file_range", tmp))?;
        self.io += started.elapsed();
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn fail(&mut self, e: SnapshotError) -> std::io::Error {
        let message = e.to_string();
        self.failed = Some(e);
        std::io::Error::other(message)
    }
}

impl std::io::Write for BodyWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.failed.is_some() {
            return Err(std::io::Error::other("the snapshot write already failed"));
        }
        self.len += data.len() as u64;
        if self.len > format::SNAPSHOT_BODY_BYTES_MAX {
            let e = SnapshotError::Encode(CodecError::Encode(format!(
                "state of more than {} bytes exceeds the snapshot limit",
                format::SNAPSHOT_BODY_BYTES_MAX
            )));
            return Err(self.fail(e));
        }
        self.crc.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let n = (WRITE_CHUNK_BYTES - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == WRITE_CHUNK_BYTES {
                if let Err(e) = self.write_chunk() {
                    return Err(self.fail(e));
                }
            }
        }
        Ok(data.len())
    }

    /// Chunks are written as they fill; the last one by `write_chunk`.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A snapshot read back and checked.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    pub header: SnapshotHeader,
    pub path: PathBuf,
    /// File size, header included.
    pub bytes: u64,
    /// Mapping, checking and decoding.
    pub elapsed: Duration,
}

/// Reads and checks the snapshot at `path`: header, length, body CRC, the
/// decode (with the state's own cross-checks), and that the body's LSN is
/// the header's.
pub fn load_with(storage: &dyn Storage, path: &Path) -> Result<Loaded, SnapshotError> {
    let started = Instant::now();
    let corrupt = |offset: u64, damage| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        offset,
        damage,
    };
    let view = storage
        .read(path)
        .map_err(SnapshotError::io("read", path))?;
    let header = SnapshotHeader::decode(&view).map_err(|d| corrupt(0, d))?;
    let body = header
        .body(&view)
        .map_err(|d| corrupt(SNAPSHOT_HEADER_LEN as u64, d))?;
    let state: State = codec::decode_snapshot(body).map_err(|e| {
        corrupt(
            SNAPSHOT_HEADER_LEN as u64,
            SnapshotDamage::Body {
                reason: e.to_string(),
            },
        )
    })?;
    if state.applied_lsn() != header.lsn {
        return Err(corrupt(
            SNAPSHOT_HEADER_LEN as u64,
            SnapshotDamage::LsnMismatch {
                header: header.lsn,
                body: state.applied_lsn(),
            },
        ));
    }
    Ok(Loaded {
        state,
        header,
        path: path.to_path_buf(),
        bytes: view.len() as u64,
        elapsed: started.elapsed(),
    })
}

/// [`load_with`] on the real file system.
pub fn load(path: &Path) -> Result<Loaded, SnapshotError> {
    load_with(&StdStorage, path)
}

/// The newest snapshot that loads, and why each newer one did not.
#[derive(Debug)]
pub struct Newest {
    pub loaded: Option<Loaded>,
    /// Snapshots newer than `loaded` (or all, if none loaded) that failed,
    /// newest first.
    pub skipped: Vec<SnapshotError>,
}

/// Loads the newest snapshot in `dir` whose LSN is at most `lsn`, falling
/// back to older ones when a newer one does not load (each failure is kept
/// in `skipped` and logged as a warning). `Err` only when the directory
/// cannot be listed.
pub fn load_newest_at_or_below_with(
    storage: &dyn Storage,
    dir: &Path,
    lsn: u64,
) -> Result<Newest, SnapshotError> {
    let mut skipped = Vec::new();
    for file in list_with(storage, dir)?.iter().rev() {
        if file.lsn > lsn {
            continue;
        }
        match load_with(storage, &file.path) {
            Ok(loaded) => {
                return Ok(Newest {
                    loaded: Some(loaded),
                    skipped,
                })
            }
            // A read error is the disk failing, not a damaged file: falling
            // back would hide it and replay more than needed from a log on
            // the same disk. Refuse, as a segment read error is refused.
            Err(e @ SnapshotError::Io { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot does not load; trying an older one");
                skipped.push(e);
            }
        }
    }
    Ok(Newest {
        loaded: None,
        skipped,
    })
}

/// [`load_newest_at_or_below_with`] on the real file system.
pub fn load_newest_at_or_below(dir: &Path, lsn: u64) -> Result<Newest, SnapshotError> {
    load_newest_at_or_below_with(&StdStorage, dir, lsn)
}

/// Removes `.snap.tmp` files: snapshots whose writer died before the
/// rename. Nothing ever relied on them. Call only while owning the
/// directory and before a snapshot writer starts.
pub fn remove_temp_files(storage: &dyn Storage, dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let names = storage.list(dir).map_err(SnapshotError::io("list", dir))?;
    let mut removed = Vec::new();
    for name in names.into_iter().filter(|n| is_temp_name(n)) {
        let path = dir.join(name);
        failpoint!(
            "snapshot::remove_temp::before",
            crate::failpoints::snapshot_fault("remove", &path)
        );
        storage
            .remove(&path)
            .map_err(SnapshotError::io("remove", &path))?;
        tracing::info!(path = %path.display(), "removed unfinished snapshot");
        removed.push(path);
    }
    if !removed.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(SnapshotError::io("fsync directory", dir))?;
    }
    Ok(removed)
}

/// What collecting after a snapshot removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub snapshots: Vec<PathBuf>,
    pub segments: Vec<PathBuf>,
    /// Segments wholly at or below this LSN were deleted (0: none could be).
    pub segments_through_lsn: u64,
}

/// After a new snapshot is durable: removes every snapshot but the
/// [`SNAPSHOTS_KEPT`] newest (oldest first, each unlink made durable before
/// the next), then every closed segment wholly at or below the LSN of the
/// OLDEST snapshot kept, so that snapshot can still stand in for a newer
/// one that fails to load. With a single snapshot no segment goes: its
/// fallback is the full log.
pub fn collect(storage: &dyn Storage, dir: &Path) -> Result<Collected, SnapshotError> {
    let files = list_with(storage, dir)?;
    let excess = files.len().saturating_sub(SNAPSHOTS_KEPT);
    let mut out = Collected::default();
    for file in &files[..excess] {
        failpoint!(
            "snapshot::gc_unlink::before",
            crate::failpoints::snapshot_fault("remove", &file.path)
        );
        storage
            .remove(&file.path)
            .map_err(SnapshotError::io("remove", &file.path))?;
        failpoint!(
            "snapshot::gc_dir_fsync::before",
            crate::failpoints::snapshot_fault("fsync directory", dir)
        );
        storage
            .sync_dir(dir)
            .map_err(SnapshotError::io("fsync directory", dir))?;
        out.snapshots.push(file.path.clone());
    }
    let kept = &files[excess..];
    if kept.len() == SNAPSHOTS_KEPT {
        out.segments_through_lsn = kept[0].lsn;
        out.segments = crate::wal::gc::remove_segments_through(storage, dir, kept[0].lsn)
            .map_err(SnapshotError::Wal)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
