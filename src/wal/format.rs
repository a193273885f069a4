//! The byte layout of WAL segments: the segment header and the record frame.
//! `docs/wal-format.md` is the prose version of this file; the two must agree.
//!
//! All integers are little-endian. Offsets below are derived from each other
//! so that a change to one field moves the rest, and `const` asserts tie the
//! sizes together.
//!
//! ```text
//! segment header (48 bytes, at offset 0 of every segment file)
//!  0       8        12         16            24          32         36        40          44      48
//!  | magic | version | hdr_len  | segment_seq | first_lsn | prev_crc | reserved | header_crc | zeros |
//!
//! record frame (24-byte header + payload, padded with zeros to 8 bytes)
//!  0          4      6       8     16            20    24
//!  | frame_len | kind | flags | lsn | batch_index | crc | payload ... | pad |
//! ```
//!
//! `frame_len` counts the header and the payload, not the padding; it is never
//! zero for a frame, so a zero there means "end of written data" and the
//! preallocated, zero-filled rest of a segment reads as the end. The frame CRC
//! (CRC-32/ISO-HDLC, as crc32fast computes it) covers header bytes 0..20 and
//! the payload.

pub const SEGMENT_MAGIC: [u8; 8] = *b"WCONFWAL";
pub const FORMAT_VERSION: u32 = 1;

const MAGIC_OFF: usize = 0;
const VERSION_OFF: usize = MAGIC_OFF + SEGMENT_MAGIC.len();
const HEADER_LEN_OFF: usize = VERSION_OFF + 4;
const SEQ_OFF: usize = HEADER_LEN_OFF + 4;
const FIRST_LSN_OFF: usize = SEQ_OFF + 8;
const PREV_CRC_OFF: usize = FIRST_LSN_OFF + 8;
const RESERVED_OFF: usize = PREV_CRC_OFF + 4;
const HEADER_CRC_OFF: usize = RESERVED_OFF + 4;
/// Bytes of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: usize = 48;

const FRAME_LEN_OFF: usize = 0;
const KIND_OFF: usize = FRAME_LEN_OFF + 4;
const FLAGS_OFF: usize = KIND_OFF + 2;
const LSN_OFF: usize = FLAGS_OFF + 2;
const BATCH_INDEX_OFF: usize = LSN_OFF + 8;
const CRC_OFF: usize = BATCH_INDEX_OFF + 4;
/// Bytes of a frame header; the payload follows.
pub const FRAME_HEADER_LEN: usize = CRC_OFF + 4;
/// Frames start at multiples of this, so a reader can scan for frames after
/// damage and a torn sector never splits a header in two places.
pub const FRAME_ALIGN: usize = 8;

/// Kind bit: a reader that does not know this kind may skip the record. A
/// reader that meets an unknown kind without it must refuse.
pub const KIND_SKIPPABLE: u16 = 0x8000;
/// Flag bit: this frame is the last of its group-commit batch. A batch is
/// written with one write and made durable with one sync.
pub const FLAG_BATCH_END: u16 = 0x0001;
/// Flag bits version 1 defines; any other bit set is damage.
pub const FLAGS_KNOWN: u16 = FLAG_BATCH_END;

/// Largest frame the format can describe. Writers have a much smaller
/// configured `record_bytes_max`.
pub const FRAME_LEN_MAX: usize = u32::MAX as usize;

const _: () = assert!(HEADER_CRC_OFF + 4 <= SEGMENT_HEADER_LEN);
const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(FRAME_HEADER_LEN == 24);
const _: () = assert!(FRAME_HEADER_LEN.is_multiple_of(FRAME_ALIGN));

/// Rounds a frame length up to the frame alignment.
pub const fn padded_len(frame_len: usize) -> usize {
    (frame_len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Bytes a record with `payload_len` bytes occupies on disk, padding included.
pub const fn frame_bytes(payload_len: usize) -> usize {
    padded_len(FRAME_HEADER_LEN + payload_len)
}

fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(buf[off..off + 2].try_into().expect("2 bytes"))
}
fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// 0 for the first segment ever written, +1 for each roll.
    pub segment_seq: u64,
    /// LSN of the first record in the segment (the file is named after it).
    pub first_lsn: u64,
    /// CRC of the previous segment's last frame; 0 for segment 0.
    pub prev_crc: u32,
}

/// Why a segment header was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    TooShort {
        len: usize,
    },
    BadMagic,
    UnsupportedVersion {
        version: u32,
    },
    BadHeaderLen {
        header_len: u32,
    },
    BadCrc {
        stored: u32,
        computed: u32,
    },
    ReservedNotZero,
    /// First LSN 0 or `u64::MAX`: no writer produces either.
    BadFirstLsn {
        first_lsn: u64,
    },
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[MAGIC_OFF..VERSION_OFF].copy_from_slice(&SEGMENT_MAGIC);
        b[VERSION_OFF..HEADER_LEN_OFF].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[HEADER_LEN_OFF..SEQ_OFF].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[SEQ_OFF..FIRST_LSN_OFF].copy_from_slice(&self.segment_seq.to_le_bytes());
        b[FIRST_LSN_OFF..PREV_CRC_OFF].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[PREV_CRC_OFF..RESERVED_OFF].copy_from_slice(&self.prev_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFF]);
        b[HEADER_CRC_OFF..HEADER_CRC_OFF + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic first (is this a segment at all),
    /// then version (can we read it), then the CRC (is it intact).
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if buf.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::TooShort { len: buf.len() });
        }
        if buf[MAGIC_OFF..VERSION_OFF] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let computed = crc32fast::hash(&buf[..HEADER_CRC_OFF]);
        let stored = u32_at(buf, HEADER_CRC_OFF);
        let version = u32_at(buf, VERSION_OFF);
        if version != FORMAT_VERSION {
            // A flipped bit in the version field is damage, not a newer writer.
            if stored != computed {
                return Err(HeaderError::BadCrc { stored, computed });
            }
            return Err(HeaderError::UnsupportedVersion { version });
        }
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        let header_len = u32_at(buf, HEADER_LEN_OFF);
        if header_len as usize != SEGMENT_HEADER_LEN {
            return Err(HeaderError::BadHeaderLen { header_len });
        }
        if u32_at(buf, RESERVED_OFF) != 0
            || buf[HEADER_CRC_OFF + 4..SEGMENT_HEADER_LEN]
                .iter()
                .any(|&b| b != 0)
        {
            return Err(HeaderError::ReservedNotZero);
        }
        let first_lsn = u64_at(buf, FIRST_LSN_OFF);
        if first_lsn == 0 || first_lsn == u64::MAX {
            return Err(HeaderError::BadFirstLsn { first_lsn });
        }
        Ok(SegmentHeader {
            segment_seq: u64_at(buf, SEQ_OFF),
            first_lsn,
            prev_crc: u32_at(buf, PREV_CRC_OFF),
        })
    }
}

/// The fixed part of a record frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Header plus payload, without padding. Never 0.
    pub frame_len: u32,
    pub kind: u16,
    pub flags: u16,
    pub lsn: u64,
    /// Position of the record in its group-commit batch: 0 for the first.
    /// `lsn - batch_index` is the LSN that opened the batch.
    pub batch_index: u32,
    pub crc: u32,
}

impl FrameHeader {
    pub fn payload_len(&self) -> usize {
        self.frame_len as usize - FRAME_HEADER_LEN
    }
    pub fn padded_len(&self) -> usize {
        padded_len(self.frame_len as usize)
    }
    pub fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }
    pub fn batch_first_lsn(&self) -> u64 {
        self.lsn.wrapping_sub(u64::from(self.batch_index))
    }
}

/// Appends one frame (header, payload, zero padding) to `out` and returns its
/// CRC. The caller has checked the payload against its size limit.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    lsn: u64,
    batch_index: u32,
    payload: &[u8],
) -> u32 {
    let frame_len = FRAME_HEADER_LEN + payload.len();
    assert!(
        frame_len <= FRAME_LEN_MAX,
        "frame of {frame_len} bytes exceeds the format"
    );
    assert!(kind & !KIND_SKIPPABLE != 0, "record kind 0 is reserved");
    assert_eq!(flags & !FLAGS_KNOWN, 0, "unknown frame flags {flags:#x}");
    let start = out.len();
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&batch_index.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start..start + CRC_OFF]);
    hasher.update(payload);
    let crc = hasher.finalize();
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(start + padded_len(frame_len), 0);
    crc
}

/// What a reader finds at a frame position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRead<'a> {
    /// A zero length field: no frame was written here.
    End,
    Frame {
        header: FrameHeader,
        payload: &'a [u8],
    },
    Damaged(FrameDamage),
}

/// Why the bytes at a frame position are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDamage {
    /// Fewer than a header's bytes remain and they are not all zero.
    ShortHeader,
    /// The length field is below the header size.
    LengthTooSmall {
        frame_len: u32,
    },
    /// The frame, padding included, runs past the end of the file.
    LengthPastEnd {
        frame_len: u32,
    },
    BadCrc {
        stored: u32,
        computed: u32,
    },
    /// Kind 0 (with or without the skippable bit), or flag bits that
    /// version 1 does not define.
    BadKindOrFlags {
        kind: u16,
        flags: u16,
    },
    /// Padding after the payload is not zero.
    NonZeroPadding,
}

/// Reads the frame at `off` in `buf` (a whole segment image). `off` must be
/// aligned and within the buffer.
pub fn read_frame(buf: &[u8], off: usize) -> FrameRead<'_> {
    debug_assert_eq!(off % FRAME_ALIGN, 0);
    let rest = &buf[off.min(buf.len())..];
    if rest.len() < FRAME_HEADER_LEN {
        if rest.iter().all(|&b| b == 0) {
            return FrameRead::End;
        }
        return FrameRead::Damaged(FrameDamage::ShortHeader);
    }
    let frame_len = u32_at(rest, FRAME_LEN_OFF);
    if frame_len == 0 {
        return FrameRead::End;
    }
    if (frame_len as usize) < FRAME_HEADER_LEN {
        return FrameRead::Damaged(FrameDamage::LengthTooSmall { frame_len });
    }
    let padded = padded_len(frame_len as usize);
    if padded > rest.len() {
        return FrameRead::Damaged(FrameDamage::LengthPastEnd { frame_len });
    }
    let payload = &rest[FRAME_HEADER_LEN..frame_len as usize];
    let stored = u32_at(rest, CRC_OFF);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&rest[..CRC_OFF]);
    hasher.update(payload);
    let computed = hasher.finalize();
    if stored != computed {
        return FrameRead::Damaged(FrameDamage::BadCrc { stored, computed });
    }
    let kind = u16_at(rest, KIND_OFF);
    let flags = u16_at(rest, FLAGS_OFF);
    if kind & !KIND_SKIPPABLE == 0 || flags & !FLAGS_KNOWN != 0 {
        return FrameRead::Damaged(FrameDamage::BadKindOrFlags { kind, flags });
    }
    if rest[frame_len as usize..padded].iter().any(|&b| b != 0) {
        return FrameRead::Damaged(FrameDamage::NonZeroPadding);
    }
    let header = FrameHeader {
        frame_len,
        kind,
        flags,
        lsn: u64_at(rest, LSN_OFF),
        batch_index: u32_at(rest, BATCH_INDEX_OFF),
        crc: stored,
    };
    FrameRead::Frame { header, payload }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_every_field_checked() {
        // Invariant: decode(encode(h)) == h, and any single-byte change is refused.
        let h = SegmentHeader {
            segment_seq: 7,
            first_lsn: 1 << 40,
            prev_crc: 0xdead_beef,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut b = bytes;
            b[i] ^= 0x10;
            assert!(SegmentHeader::decode(&b).is_err(), "byte {i} flip accepted");
        }
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(HeaderError::TooShort { len: 10 })
        );
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        // Invariant: a well-formed header of another version is "unsupported", not "corrupt".
        let mut b = SegmentHeader {
            segment_seq: 0,
            first_lsn: 1,
            prev_crc: 0,
        }
        .encode();
        b[VERSION_OFF..HEADER_LEN_OFF].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFF]);
        b[HEADER_CRC_OFF..HEADER_CRC_OFF + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(HeaderError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn frame_round_trip_for_every_padding() {
        // Invariant: every payload length round-trips, frames stay 8-aligned,
        // and the CRC covers header fields as well as the payload.
        for len in 0..40usize {
            let payload: Vec<u8> = (0..len as u8).collect();
            let mut buf = vec![];
            let crc = encode_frame(
                &mut buf,
                3 | KIND_SKIPPABLE,
                FLAG_BATCH_END,
                99,
                4,
                &payload,
            );
            assert_eq!(buf.len(), frame_bytes(len));
            assert_eq!(buf.len() % FRAME_ALIGN, 0);
            match read_frame(&buf, 0) {
                FrameRead::Frame { header, payload: p } => {
                    assert_eq!(p, &payload[..]);
                    assert_eq!(header.lsn, 99);
                    assert_eq!(header.kind, 3 | KIND_SKIPPABLE);
                    assert!(header.is_batch_end());
                    assert_eq!(header.batch_first_lsn(), 95);
                    assert_eq!(header.crc, crc);
                }
                other => panic!("len {len}: {other:?}"),
            }
            for field in [LSN_OFF, KIND_OFF, BATCH_INDEX_OFF, FLAGS_OFF] {
                let mut b = buf.clone();
                b[field] ^= 1;
                assert!(
                    matches!(
                        read_frame(&b, 0),
                        FrameRead::Damaged(FrameDamage::BadCrc { .. })
                    ),
                    "flip at {field} not caught"
                );
            }
        }
    }

    #[test]
    fn kind_zero_is_refused_with_or_without_the_skippable_bit() {
        // Invariant: kind 0 never validates, even as "skippable kind 0".
        let mut buf = vec![];
        encode_frame(&mut buf, 1, 0, 1, 0, b"x");
        buf[KIND_OFF..KIND_OFF + 2].copy_from_slice(&KIND_SKIPPABLE.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf[..CRC_OFF]);
        hasher.update(b"x");
        buf[CRC_OFF..CRC_OFF + 4].copy_from_slice(&hasher.finalize().to_le_bytes());
        assert!(matches!(
            read_frame(&buf, 0),
            FrameRead::Damaged(FrameDamage::BadKindOrFlags { .. })
        ));
    }

    #[test]
    fn first_lsn_zero_or_max_is_refused() {
        // Invariant: no header claims an LSN no writer can produce, so LSN
        // arithmetic in readers cannot overflow.
        for first_lsn in [0, u64::MAX] {
            let b = SegmentHeader {
                segment_seq: 0,
                first_lsn,
                prev_crc: 0,
            }
            .encode();
            assert_eq!(
                SegmentHeader::decode(&b),
                Err(HeaderError::BadFirstLsn { first_lsn })
            );
        }
    }

    #[test]
    fn zeros_read_as_end_and_short_garbage_as_damage() {
        // Invariant: preallocated zeros are the end; a non-zero stub is damage.
        assert_eq!(read_frame(&[0u8; 64], 0), FrameRead::End);
        assert_eq!(read_frame(&[0u8; 8], 0), FrameRead::End);
        assert_eq!(
            read_frame(&[0, 0, 1, 0, 0, 0, 0, 0], 0),
            FrameRead::Damaged(FrameDamage::ShortHeader)
        );
        let mut buf = vec![];
        encode_frame(&mut buf, 1, 0, 1, 0, b"hello");
        assert!(matches!(
            read_frame(&buf[..buf.len() - 8], 0),
            FrameRead::Damaged(FrameDamage::LengthPastEnd { .. })
        ));
        let mut small = buf.clone();
        small[0..4].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            read_frame(&small, 0),
            FrameRead::Damaged(FrameDamage::LengthTooSmall { frame_len: 5 })
        ));
    }
}
