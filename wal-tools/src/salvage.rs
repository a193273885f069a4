//! `verify --salvage`: a scan that does not stop at damage. Where the
//! library's scan (`recovery::scan_dir`, what the daemon runs) stops at the
//! first problem, this one reports it, looks for the next frame whose CRC
//! checks out, and goes on from there, so an operator sees every damaged
//! region of a log. Read-only, like everything but `repair --apply`. Also
//! the hexdump printed around each damage.

use std::fmt::Write as _;

use wconf::wal::format::{
    read_frame, FrameRead, SegmentHeader, FLAGS_KNOWN, FRAME_ALIGN, FRAME_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use wconf::wal::reader::{segment_header, SegmentFile};
use wconf::wal::recovery::chain_damage;
use wconf::wal::{Damage, WalError};

/// Bytes shown on each side of a damaged offset.
pub const HEXDUMP_CONTEXT_BYTES: usize = 64;

/// One damaged place, and where valid frames start again after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Index into the segments given to `salvage`.
    pub segment: usize,
    pub offset: u64,
    /// The LSN expected at `offset`, when the scan knew it.
    pub lsn: Option<u64>,
    pub damage: Damage,
    /// The next valid frame after the damage in the same segment: offset, LSN.
    pub resumed: Option<(u64, u64)>,
}

/// What the whole walk found.
pub struct Salvage {
    pub regions: Vec<Region>,
    /// Frames whose CRC checks out, damaged regions skipped.
    pub valid_frames: u64,
}

/// Walks every segment, reporting each damage and resuming after it.
pub fn salvage(segments: &[SegmentFile]) -> Result<Salvage, WalError> {
    let mut regions = vec![];
    let mut valid_frames = 0;
    // (segment_seq, next LSN, CRC of the last frame) of the previous segment.
    let mut prev: Option<(u64, u64, u32)> = None;
    for (i, file) in segments.iter().enumerate() {
        let expected_lsn = prev.map_or(file.name_lsn, |p| p.1);
        let mut report = |offset: u64, lsn: Option<u64>, damage, resumed| {
            regions.push(Region {
                segment: i,
                offset,
                lsn,
                damage,
                resumed,
            })
        };
        let header = match segment_header(file) {
            Ok(h) => Some(h),
            Err((_, Some(unsupported))) => return Err(unsupported),
            Err((damage, None)) => {
                report(0, Some(expected_lsn), damage, None);
                // A misnamed segment still has a readable header: scan it.
                SegmentHeader::decode(&file.view).ok()
            }
        };
        let Some(header) = header else {
            prev = None;
            continue;
        };
        if let Some(prev) = prev {
            let damage = chain_damage(prev, &header);
            if let Some(damage) = damage {
                report(0, Some(prev.1), damage, None);
            }
        }
        let walk = walk_frames(&file.view, header.first_lsn, header.prev_crc, &mut report);
        valid_frames += walk.frames;
        prev = Some((header.segment_seq, walk.next_lsn, walk.last_crc));
    }
    Ok(Salvage {
        regions,
        valid_frames,
    })
}

struct Walk {
    frames: u64,
    next_lsn: u64,
    last_crc: u32,
}

/// The frames of one segment, reporting each damage and resynchronising on
/// the next aligned offset that holds a frame whose CRC checks out.
fn walk_frames(
    buf: &[u8],
    first_lsn: u64,
    prev_crc: u32,
    report: &mut impl FnMut(u64, Option<u64>, Damage, Option<(u64, u64)>),
) -> Walk {
    let mut off = SEGMENT_HEADER_LEN;
    let mut walk = Walk {
        frames: 0,
        next_lsn: first_lsn,
        last_crc: prev_crc,
    };
    let mut batch_index = 0u32;
    loop {
        let damage = match read_frame(buf, off) {
            FrameRead::End => {
                if buf[off.min(buf.len())..].iter().all(|&b| b == 0) {
                    if batch_index != 0 {
                        report(
                            off as u64,
                            Some(walk.next_lsn),
                            Damage::IncompleteBatch,
                            None,
                        );
                    }
                    return walk;
                }
                Damage::GarbageAfterEnd
            }
            FrameRead::Damaged(d) => Damage::Frame(d),
            FrameRead::Frame { header, .. } => {
                let mut damage = None;
                if header.lsn != walk.next_lsn {
                    damage = Some(Damage::LsnMismatch {
                        expected: walk.next_lsn,
                        found: header.lsn,
                    });
                } else if header.batch_index != batch_index {
                    damage = Some(Damage::BatchMismatch {
                        expected: batch_index,
                        found: header.batch_index,
                    });
                }
                if let Some(damage) = damage {
                    // The frame itself is sound: resume right here.
                    report(
                        off as u64,
                        Some(walk.next_lsn),
                        damage,
                        Some((off as u64, header.lsn)),
                    );
                }
                walk.frames += 1;
                walk.next_lsn = header.lsn + 1;
                walk.last_crc = header.crc;
                batch_index = if header.is_batch_end() {
                    0
                } else {
                    header.batch_index + 1
                };
                off += header.padded_len();
                continue;
            }
        };
        let resumed = resync(buf, off + FRAME_ALIGN);
        report(
            off as u64,
            Some(walk.next_lsn),
            damage,
            resumed.map(|(o, lsn)| (o as u64, lsn)),
        );
        let Some((next, lsn)) = resumed else {
            return walk;
        };
        off = next;
        walk.next_lsn = lsn;
        batch_index = match read_frame(buf, off) {
            FrameRead::Frame { header, .. } => header.batch_index,
            _ => unreachable!("resync returns a valid frame"),
        };
    }
}

/// The first aligned offset at or after `from` holding a frame whose CRC
/// checks out, with its LSN. Cheap header checks come first so garbage
/// costs no CRC over a bogus length.
fn resync(buf: &[u8], from: usize) -> Option<(usize, u64)> {
    let mut off = from;
    while off + FRAME_HEADER_LEN <= buf.len() {
        let b = &buf[off..];
        let frame_len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_le_bytes(b[4..6].try_into().expect("2 bytes"));
        let flags = u16::from_le_bytes(b[6..8].try_into().expect("2 bytes"));
        if frame_len >= FRAME_HEADER_LEN
            && frame_len <= b.len()
            && kind != 0
            && flags & !FLAGS_KNOWN == 0
        {
            if let FrameRead::Frame { header, .. } = read_frame(buf, off) {
                return Some((off, header.lsn));
            }
        }
        off += FRAME_ALIGN;
    }
    None
}

/// `xxd`-style lines for the bytes within `HEXDUMP_CONTEXT_BYTES` of `at`,
/// 16 a line; the line holding `at` is marked `>`.
pub fn hexdump(buf: &[u8], at: u64) -> String {
    let at = (at as usize).min(buf.len());
    let start = at.saturating_sub(HEXDUMP_CONTEXT_BYTES) & !15;
    let end = (at + HEXDUMP_CONTEXT_BYTES).min(buf.len());
    let mut out = String::new();
    let mut line = start;
    while line < end {
        let bytes = &buf[line..(line + 16).min(end)];
        let mark = if (line..line + 16).contains(&at) {
            '>'
        } else {
            ' '
        };
        let _ = write!(out, "  {mark} {line:08x}:");
        for chunk in bytes.chunks(2) {
            out.push(' ');
            for b in chunk {
                let _ = write!(out, "{b:02x}");
            }
        }
        let width = bytes.len() * 2 + bytes.len().div_ceil(2);
        out.push_str(&" ".repeat(40 - width + 1));
        for &b in bytes {
            out.push(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            });
        }
        out.push('\n');
        line += 16;
    }
    out
}
