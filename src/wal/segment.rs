//! Segment files: their names, and the one way a new segment comes into
//! existence (temporary name, preallocate, header, fsync, rename, directory
//! fsync).

use std::path::{Path, PathBuf};

use super::format::SegmentHeader;
use super::storage::{Storage, StorageFile};
use super::WalError;
use crate::failpoints::failpoint;

/// Segment files are named by their first LSN, zero-padded so that the
/// lexical order of names is the LSN order.
pub const SEGMENT_SUFFIX: &str = ".wal";
pub const TEMP_SUFFIX: &str = ".wal.tmp";
pub const BROKEN_SUFFIX: &str = ".broken";
const LSN_DIGITS: usize = 20;

pub fn segment_name(first_lsn: u64) -> String {
    lsn_name(first_lsn, SEGMENT_SUFFIX)
}

/// The first LSN a segment file name claims, or `None` for other files.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_lsn_name(name, SEGMENT_SUFFIX)
}

/// `<20-digit LSN><suffix>`: the naming scheme of segments and snapshots.
pub fn lsn_name(lsn: u64, suffix: &str) -> String {
    format!("{lsn:0LSN_DIGITS$}{suffix}")
}

/// The LSN of a `<20-digit LSN><suffix>` name, or `None` for other names.
pub fn parse_lsn_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != LSN_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment names in `dir` with their first LSNs, in LSN order.
pub fn segment_names(storage: &dyn Storage, dir: &Path) -> Result<Vec<(u64, String)>, WalError> {
    let names = storage
        .list(dir)
        .map_err(|e| WalError::io("list", dir, e))?;
    let mut found: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|lsn| (lsn, n)))
        .collect();
    found.sort();
    Ok(found)
}

pub fn is_temp_name(name: &str) -> bool {
    parse_lsn_name(name, TEMP_SUFFIX).is_some()
}

/// A name for the side file that keeps bytes cut from `segment`: the first
/// of `<segment>.broken`, `<segment>.broken.1`, ... that does not exist.
pub fn broken_path(storage: &dyn Storage, segment: &Path) -> Result<PathBuf, WalError> {
    let base = format!("{}{BROKEN_SUFFIX}", segment.display());
    for n in 0u32.. {
        let candidate = if n == 0 {
            PathBuf::from(&base)
        } else {
            PathBuf::from(format!("{base}.{n}"))
        };
        if !storage
            .exists(&candidate)
            .map_err(|e| WalError::io("stat", &candidate, e))?
        {
            return Ok(candidate);
        }
    }
    unreachable!("u32 side-file names exhausted")
}

/// Creates the segment `header` describes in `dir`, `capacity` bytes long,
/// and returns it open for writing. When this returns, the file, its header
/// and its name are durable. Every directory change is followed by a
/// directory fsync.
pub fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    header: &SegmentHeader,
    capacity: u64,
) -> Result<(PathBuf, Box<dyn StorageFile>), WalError> {
    let name = segment_name(header.first_lsn);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{}{TEMP_SUFFIX}", &name[..LSN_DIGITS]));
    failpoint!(
        "segment::create::before",
        crate::failpoints::wal_fault("create", &tmp)
    );
    let mut file = storage
        .create_new(&tmp)
        .map_err(|e| WalError::io("create", &tmp, e))?;
    failpoint!(
        "segment::create_dir_fsync::before",
        crate::failpoints::wal_fault("fsync directory", dir)
    );
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("fsync directory", dir, e))?;
    failpoint!(
        "segment::preallocate::before",
        crate::failpoints::wal_fault("preallocate", &tmp)
    );
    file.allocate(capacity)
        .map_err(|e| WalError::io("preallocate", &tmp, e))?;
    failpoint!(
        "segment::header_write::before",
        crate::failpoints::wal_fault("write header", &tmp)
    );
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| WalError::io("write header", &tmp, e))?;
    failpoint!(
        "segment::fsync::before",
        crate::failpoints::wal_fault("fsync", &tmp)
    );
    file.sync_all()
        .map_err(|e| WalError::io("fsync", &tmp, e))?;
    failpoint!(
        "segment::rename::before",
        crate::failpoints::wal_fault("rename", &tmp)
    );
    storage
        .rename(&tmp, &path)
        .map_err(|e| WalError::io("rename", &tmp, e))?;
    failpoint!(
        "segment::dir_fsync::before",
        crate::failpoints::wal_fault("fsync directory", dir)
    );
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("fsync directory", dir, e))?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn_and_parse_back() {
        // Invariant: parse(name(lsn)) == lsn and lexical order == LSN order.
        for lsn in [0, 1, 9, 10, 1 << 33, u64::MAX] {
            assert_eq!(parse_segment_name(&segment_name(lsn)), Some(lsn));
        }
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("1.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000001.wal.tmp"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.wal"), None);
        assert!(is_temp_name("00000000000000000001.wal.tmp"));
    }
}
