//! Reading a WAL directory: finding its segments, walking their frames, and
//! validating them (CRC, LSN continuity, batch positions, the segment chain).
//! Nothing here writes; `recovery` decides what a problem means.

use std::path::{Path, PathBuf};

use super::format::{
    read_frame, FrameHeader, FrameRead, HeaderError, SegmentHeader, FLAGS_KNOWN, FRAME_ALIGN,
    FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::segment::segment_names;
use super::storage::{ReadView, Storage};
use super::{Damage, WalError};

/// A segment file as found in the directory.
pub struct SegmentFile {
    pub path: PathBuf,
    /// The first LSN its name claims.
    pub name_lsn: u64,
    pub view: ReadView,
}

/// Lists the segment files of `dir` in LSN order and maps each one.
pub fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    segment_names(storage, dir)?
        .into_iter()
        .map(|(name_lsn, name)| {
            let path = dir.join(name);
            let view = storage
                .read(&path)
                .map_err(|e| WalError::io("read", &path, e))?;
            Ok(SegmentFile {
                path,
                name_lsn,
                view,
            })
        })
        .collect()
}

/// Where validation of a segment stopped early, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    /// Byte offset of the damage in the segment.
    pub offset: u64,
    /// The LSN expected at `offset`.
    pub lsn: u64,
    pub damage: Damage,
    /// Where a repair would cut: the end of the last complete batch before
    /// the damage (records of an incomplete batch were never acknowledged).
    pub cut_offset: u64,
    /// The first LSN a cut at `cut_offset` drops.
    pub cut_lsn: u64,
    /// True when everything from `cut_offset` on can be the torn write of the
    /// last batch: no valid record of another batch follows the damage.
    /// Only meaningful for the last segment.
    pub tail_only: bool,
    /// The highest LSN of any valid-looking frame at or after the damage.
    pub lsn_max_after: Option<u64>,
    /// Offset just past the last non-zero byte of the file.
    pub data_end: u64,
}

/// What validating one segment's frames found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    /// Complete batches only.
    pub records: u64,
    /// The offset after the last complete batch: where a writer continues.
    pub end: u64,
    /// The LSN after the last complete batch.
    pub next_lsn: u64,
    /// The CRC of the last frame of the last complete batch, or the header's
    /// `prev_crc` when there is none (so the chain passes through empty segments).
    pub last_crc: u32,
    pub problem: Option<Problem>,
}

/// Validates the frames of one segment image whose header decoded.
pub fn scan_segment(buf: &[u8], header: SegmentHeader) -> SegmentScan {
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = header.first_lsn;
    let mut batch_index = 0u32;
    let mut out = SegmentScan {
        header,
        records: 0,
        end: off as u64,
        next_lsn: expected,
        last_crc: header.prev_crc,
        problem: None,
    };
    let mut in_batch = 0u64;
    let damage = loop {
        match read_frame(buf, off) {
            FrameRead::End => {
                if first_nonzero(buf, off).is_some() {
                    break Damage::GarbageAfterEnd;
                }
                if batch_index != 0 {
                    break Damage::IncompleteBatch;
                }
                return out;
            }
            FrameRead::Damaged(d) => break Damage::Frame(d),
            FrameRead::Frame { header: fh, .. } => {
                // u64::MAX is never written (the next LSN would overflow).
                if fh.lsn != expected || fh.lsn == u64::MAX {
                    break Damage::LsnMismatch {
                        expected,
                        found: fh.lsn,
                    };
                }
                if fh.batch_index != batch_index {
                    break Damage::BatchMismatch {
                        expected: batch_index,
                        found: fh.batch_index,
                    };
                }
                expected += 1;
                off += fh.padded_len();
                in_batch += 1;
                if fh.is_batch_end() {
                    batch_index = 0;
                    out.records += in_batch;
                    in_batch = 0;
                    out.end = off as u64;
                    out.next_lsn = expected;
                    out.last_crc = fh.crc;
                } else {
                    batch_index += 1;
                }
            }
        }
    };
    let (tail_only, lsn_max_after) = match damage {
        // A valid frame in the wrong place is never what a torn write leaves.
        Damage::LsnMismatch { found, .. } => (false, Some(found)),
        Damage::BatchMismatch { .. } => (false, Some(expected)),
        _ => survivors_consistent(buf, off, out.next_lsn, expected),
    };
    let lsn_max_after = match (lsn_max_after, in_batch) {
        (None, 0) => None,
        (None, _) => Some(expected - 1),
        (some, _) => some,
    };
    out.problem = Some(Problem {
        offset: off as u64,
        lsn: expected,
        damage,
        cut_offset: out.end,
        cut_lsn: out.next_lsn,
        tail_only,
        lsn_max_after,
        data_end: last_nonzero_end(buf) as u64,
    });
    out
}

/// After damage at `from`, looks for valid frames further on. A torn write
/// of the last batch (which opened at `batch_lsn`) can leave later frames of
/// that same batch intact, but never a frame of another batch. Returns
/// whether every survivor belongs to the open batch, and the highest LSN seen.
fn survivors_consistent(
    buf: &[u8],
    from: usize,
    batch_lsn: u64,
    expected: u64,
) -> (bool, Option<u64>) {
    let mut off = from + FRAME_ALIGN;
    let mut lsn_max = None;
    // Frames are at least a header long, so LSNs beyond this cannot be ours:
    // checking the range before the CRC keeps the scan linear on garbage.
    let lsn_limit = expected
        .saturating_add((buf.len().saturating_sub(from) / FRAME_HEADER_LEN) as u64)
        .saturating_add(1);
    while off + FRAME_HEADER_LEN <= buf.len() {
        let Some(nz) = first_nonzero(buf, off) else {
            break;
        };
        off = nz - nz % FRAME_ALIGN;
        if off + FRAME_HEADER_LEN > buf.len() {
            break;
        }
        if let Some(fh) = plausible_header(&buf[off..], expected, lsn_limit) {
            if let FrameRead::Frame { header, .. } = read_frame(buf, off) {
                debug_assert_eq!(header, fh);
                lsn_max = lsn_max.max(Some(header.lsn));
                if header.batch_first_lsn() != batch_lsn {
                    return (false, lsn_max);
                }
                off += header.padded_len();
                continue;
            }
        }
        off += FRAME_ALIGN;
    }
    (true, lsn_max)
}

/// Cheap checks on a frame header before its CRC is computed.
fn plausible_header(b: &[u8], lsn_min: u64, lsn_limit: u64) -> Option<FrameHeader> {
    let frame_len = u32::from_le_bytes(b[0..4].try_into().ok()?);
    let kind = u16::from_le_bytes(b[4..6].try_into().ok()?);
    let flags = u16::from_le_bytes(b[6..8].try_into().ok()?);
    let lsn = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let batch_index = u32::from_le_bytes(b[16..20].try_into().ok()?);
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    let ok = (frame_len as usize) >= FRAME_HEADER_LEN
        && (frame_len as usize) <= b.len()
        && kind != 0
        && flags & !FLAGS_KNOWN == 0
        && lsn >= lsn_min
        && lsn < lsn_limit
        && u64::from(batch_index) <= lsn;
    ok.then_some(FrameHeader {
        frame_len,
        kind,
        flags,
        lsn,
        batch_index,
        crc,
    })
}

fn first_nonzero(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    // A word at a time: preallocated tails are megabytes of zeros, and this
    // runs over all of them at every start.
    let mut words = rest.chunks_exact(8);
    let mut base = from;
    for word in &mut words {
        if u64::from_ne_bytes(word.try_into().expect("8 bytes")) != 0 {
            return word.iter().position(|&b| b != 0).map(|i| base + i);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b != 0)
        .map(|i| base + i)
}

fn last_nonzero_end(buf: &[u8]) -> usize {
    buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// One record as replay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: u64,
    pub kind: u16,
    pub payload: &'a [u8],
    /// Byte offset of the frame in its segment.
    pub offset: u64,
    pub header: FrameHeader,
}

/// Iterates the frames of a validated segment range `[SEGMENT_HEADER_LEN, end)`.
pub struct Frames<'a> {
    buf: &'a [u8],
    off: usize,
    end: usize,
    /// The LSN the next frame should have, for error reports.
    next_lsn: u64,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8], end: usize) -> Frames<'a> {
        let next_lsn = SegmentHeader::decode(buf).map_or(0, |h| h.first_lsn);
        Frames {
            buf,
            off: SEGMENT_HEADER_LEN,
            end: end.min(buf.len()),
            next_lsn,
        }
    }
}

/// Where a range that was valid when scanned no longer is (another process
/// wrote to the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    pub offset: u64,
    pub lsn: u64,
    pub damage: Damage,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Record<'a>, FrameError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.off >= self.end {
            return None;
        }
        let off = self.off;
        let damage = match read_frame(&self.buf[..self.end], off) {
            FrameRead::Frame { header, payload } => {
                self.off += header.padded_len();
                self.next_lsn = header.lsn.saturating_add(1);
                let rec = Record {
                    lsn: header.lsn,
                    kind: header.kind,
                    payload,
                    offset: off as u64,
                    header,
                };
                return Some(Ok(rec));
            }
            FrameRead::Damaged(d) => Damage::Frame(d),
            FrameRead::End => Damage::GarbageAfterEnd,
        };
        self.off = self.end;
        Some(Err(FrameError {
            offset: off as u64,
            lsn: self.next_lsn,
            damage,
        }))
    }
}

/// The header of a segment image, or the damage that stops it being read.
pub fn segment_header(file: &SegmentFile) -> Result<SegmentHeader, (Damage, Option<WalError>)> {
    match SegmentHeader::decode(&file.view) {
        Ok(h) if h.first_lsn != file.name_lsn => Err((
            Damage::Misnamed {
                name_lsn: file.name_lsn,
                header_lsn: h.first_lsn,
            },
            None,
        )),
        Ok(h) => Ok(h),
        Err(HeaderError::UnsupportedVersion { version }) => Err((
            Damage::Header(HeaderError::UnsupportedVersion { version }),
            Some(WalError::UnsupportedVersion {
                segment: file.path.clone(),
                version,
            }),
        )),
        Err(e) => Err((Damage::Header(e), None)),
    }
}
