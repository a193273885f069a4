//! Segment collection: deleting whole closed segments whose every record a
//! durable snapshot covers. It only unlinks files; it never opens, writes,
//! truncates or syncs a segment, so `wal::writer` stays the only writer of
//! segment data.

use std::path::{Path, PathBuf};

use super::segment::segment_names;
use super::storage::Storage;
use super::WalError;
use crate::failpoints::failpoint;

/// Deletes, oldest first, every segment all of whose records have LSNs at
/// or below `lsn`: a segment qualifies when the NEXT segment starts at or
/// below `lsn + 1`. The newest segment has no next one, so the segment the
/// writer appends to is never touched; a segment the writer rolls away
/// from during the call is closed, and deleting it is as correct as
/// deleting any other. Each unlink is followed by a directory fsync before
/// the next, so a crash leaves a log that still starts at a segment
/// boundary with no gap (unlinks made durable out of order could leave one).
///
/// The caller must hold a durable snapshot at `lsn` or above that recovery
/// will use, or the log no longer starts where replay needs it.
pub fn remove_segments_through(
    storage: &dyn Storage,
    dir: &Path,
    lsn: u64,
) -> Result<Vec<PathBuf>, WalError> {
    let segments = segment_names(storage, dir)?;
    let mut removed = Vec::new();
    for pair in segments.windows(2) {
        let ((_, name), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first > lsn.saturating_add(1) {
            break;
        }
        let path = dir.join(name);
        failpoint!(
            "wal::gc_unlink::before",
            crate::failpoints::wal_fault("remove", &path)
        );
        storage
            .remove(&path)
            .map_err(|e| WalError::io("remove", &path, e))?;
        failpoint!(
            "wal::gc_dir_fsync::before",
            crate::failpoints::wal_fault("fsync directory", dir)
        );
        storage
            .sync_dir(dir)
            .map_err(|e| WalError::io("fsync directory", dir, e))?;
        tracing::debug!(path = %path.display(), through_lsn = lsn, "removed segment");
        removed.push(path);
    }
    Ok(removed)
}
