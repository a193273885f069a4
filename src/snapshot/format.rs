//! The bytes of a snapshot file: a 64-byte header, then the body (the
//! codec's encoding of the whole persisted `State`). See
//! `docs/wal-format.md`, section 13.
//!
//! ```text
//! <------------------------------- 8 bytes ------------------------------->
//! | magic = "WCONFSNP"                                                     |  0
//! | version (u32) = 1                  | header_len (u32) = 64             |  8
//! | lsn (u64)                                                              | 16
//! | body_len (u64)                                                         | 24
//! | body_crc (u32)                     | reserved (u32) = 0                | 32
//! | epoch (u64)                                                            | 40
//! | created_unix_ms (u64)                                                  | 48
//! | header_crc (u32)                   | zero (4 bytes)                    | 56
//! | body (body_len bytes) ...                                              | 64
//! ```
//!
//! Little-endian throughout; CRC-32/ISO-HDLC (`crc32fast`), as the WAL.

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"WCONFSNP";
pub const SNAPSHOT_VERSION: u32 = 1;

const MAGIC_OFF: usize = 0;
const VERSION_OFF: usize = MAGIC_OFF + 8;
const HEADER_LEN_OFF: usize = VERSION_OFF + 4;
const LSN_OFF: usize = HEADER_LEN_OFF + 4;
const BODY_LEN_OFF: usize = LSN_OFF + 8;
const BODY_CRC_OFF: usize = BODY_LEN_OFF + 8;
const RESERVED_OFF: usize = BODY_CRC_OFF + 4;
const EPOCH_OFF: usize = RESERVED_OFF + 4;
const CREATED_OFF: usize = EPOCH_OFF + 8;
const HEADER_CRC_OFF: usize = CREATED_OFF + 8;
const ZERO_OFF: usize = HEADER_CRC_OFF + 4;
/// The header's size; the body starts here.
pub const SNAPSHOT_HEADER_LEN: usize = ZERO_OFF + 4;

const _: () = assert!(SNAPSHOT_HEADER_LEN == 64);
const _: () = assert!(SNAPSHOT_HEADER_LEN.is_multiple_of(8));

/// The largest body a snapshot may have: the codec's snapshot cap, so a
/// header cannot make the loader map or hash more than it would decode.
pub const SNAPSHOT_BODY_BYTES_MAX: u64 = crate::codec::SNAPSHOT_DECODE_BYTES_MAX as u64;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The state is the state after applying every record up to this LSN.
    pub lsn: u64,
    pub body_len: u64,
    pub body_crc: u32,
    /// The state's epoch, for listings (the body has it too).
    pub epoch: u64,
    /// Wall-clock time the snapshot was taken, for listings only.
    pub created_unix_ms: u64,
}

/// Why a snapshot file does not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotDamage {
    /// Shorter than the header.
    TooShort {
        len: u64,
    },
    BadMagic,
    /// A valid header of another format version (the CRC matched).
    UnsupportedVersion {
        version: u32,
    },
    BadHeaderCrc {
        stored: u32,
        computed: u32,
    },
    BadHeaderLen {
        header_len: u32,
    },
    ReservedNotZero,
    /// The file is not exactly header plus body: torn, or extended.
    LengthMismatch {
        expected: u64,
        found: u64,
    },
    BodyTooLarge {
        body_len: u64,
    },
    BadBodyCrc {
        stored: u32,
        computed: u32,
    },
    /// The body passed its CRC but does not decode to a consistent state.
    Body {
        reason: String,
    },
    /// The body decodes to a state at another LSN than the header says.
    LsnMismatch {
        header: u64,
        body: u64,
    },
}

impl std::fmt::Display for SnapshotDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SnapshotDamage::*;
        match self {
            TooShort { len } => write!(
                f,
                "{len} bytes, shorter than the {SNAPSHOT_HEADER_LEN}-byte header"
            ),
            BadMagic => write!(f, "not a snapshot (bad magic)"),
            UnsupportedVersion { version } => write!(
                f,
                "snapshot format version {version}; this build reads version {SNAPSHOT_VERSION}"
            ),
            BadHeaderCrc { stored, computed } => write!(
                f,
                "header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            BadHeaderLen { header_len } => write!(
                f,
                "header length {header_len}, expected {SNAPSHOT_HEADER_LEN}"
            ),
            ReservedNotZero => write!(f, "reserved header bytes are not zero"),
            LengthMismatch { expected, found } => {
                write!(f, "file is {found} bytes, header says {expected}")
            }
            BodyTooLarge { body_len } => {
                write!(
                    f,
                    "body of {body_len} bytes exceeds {SNAPSHOT_BODY_BYTES_MAX}"
                )
            }
            BadBodyCrc { stored, computed } => write!(
                f,
                "body CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Body { reason } => write!(f, "body does not decode: {reason}"),
            LsnMismatch { header, body } => {
                write!(
                    f,
                    "header says LSN {header}, body holds the state at LSN {body}"
                )
            }
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl SnapshotHeader {
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_LEN] {
        let mut b = [0u8; SNAPSHOT_HEADER_LEN];
        b[MAGIC_OFF..VERSION_OFF].copy_from_slice(&SNAPSHOT_MAGIC);
        b[VERSION_OFF..HEADER_LEN_OFF].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        b[HEADER_LEN_OFF..LSN_OFF].copy_from_slice(&(SNAPSHOT_HEADER_LEN as u32).to_le_bytes());
        b[LSN_OFF..BODY_LEN_OFF].copy_from_slice(&self.lsn.to_le_bytes());
        b[BODY_LEN_OFF..BODY_CRC_OFF].copy_from_slice(&self.body_len.to_le_bytes());
        b[BODY_CRC_OFF..RESERVED_OFF].copy_from_slice(&self.body_crc.to_le_bytes());
        b[EPOCH_OFF..CREATED_OFF].copy_from_slice(&self.epoch.to_le_bytes());
        b[CREATED_OFF..HEADER_CRC_OFF].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFF]);
        b[HEADER_CRC_OFF..ZERO_OFF].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks the header at the start of `file`, and that the
    /// file is exactly header plus body. The body itself is not read.
    pub fn decode(file: &[u8]) -> Result<SnapshotHeader, SnapshotDamage> {
        if file.len() < SNAPSHOT_HEADER_LEN {
            return Err(SnapshotDamage::TooShort {
                len: file.len() as u64,
            });
        }
        let b = &file[..SNAPSHOT_HEADER_LEN];
        if b[MAGIC_OFF..VERSION_OFF] != SNAPSHOT_MAGIC {
            return Err(SnapshotDamage::BadMagic);
        }
        let stored = u32_at(b, HEADER_CRC_OFF);
        let computed = crc32fast::hash(&b[..HEADER_CRC_OFF]);
        let version = u32_at(b, VERSION_OFF);
        // As for segments: a flipped version bit is damage, a newer writer
        // has a valid CRC.
        if stored != computed {
            return Err(SnapshotDamage::BadHeaderCrc { stored, computed });
        }
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotDamage::UnsupportedVersion { version });
        }
        let header_len = u32_at(b, HEADER_LEN_OFF);
        if header_len as usize != SNAPSHOT_HEADER_LEN {
            return Err(SnapshotDamage::BadHeaderLen { header_len });
        }
        if u32_at(b, RESERVED_OFF) != 0 || u32_at(b, ZERO_OFF) != 0 {
            return Err(SnapshotDamage::ReservedNotZero);
        }
        let header = SnapshotHeader {
            lsn: u64_at(b, LSN_OFF),
            body_len: u64_at(b, BODY_LEN_OFF),
            body_crc: u32_at(b, BODY_CRC_OFF),
            epoch: u64_at(b, EPOCH_OFF),
            created_unix_ms: u64_at(b, CREATED_OFF),
        };
        if header.body_len > SNAPSHOT_BODY_BYTES_MAX {
            return Err(SnapshotDamage::BodyTooLarge {
                body_len: header.body_len,
            });
        }
        let expected = SNAPSHOT_HEADER_LEN as u64 + header.body_len;
        if file.len() as u64 != expected {
            return Err(SnapshotDamage::LengthMismatch {
                expected,
                found: file.len() as u64,
            });
        }
        Ok(header)
    }

    /// The body of a file whose header decoded, after its CRC check.
    pub fn body<'a>(&self, file: &'a [u8]) -> Result<&'a [u8], SnapshotDamage> {
        let body = &file[SNAPSHOT_HEADER_LEN..];
        let computed = crc32fast::hash(body);
        if computed != self.body_crc {
            return Err(SnapshotDamage::BadBodyCrc {
                stored: self.body_crc,
                computed,
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &[u8]) -> Vec<u8> {
        let h = SnapshotHeader {
            lsn: 42,
            body_len: body.len() as u64,
            body_crc: crc32fast::hash(body),
            epoch: 3,
            created_unix_ms: 1_700_000_000_000,
        };
        let mut f = h.encode().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn header_round_trips_and_every_header_bit_flip_is_caught() {
        // Invariant: decode(encode(h)) == h, and flipping any single bit of
        // the header makes decode fail (never a different valid header).
        let f = file(b"body bytes");
        let h = SnapshotHeader::decode(&f).unwrap();
        assert_eq!((h.lsn, h.epoch, h.body_len), (42, 3, 10));
        assert_eq!(h.body(&f).unwrap(), b"body bytes");
        for bit in 0..SNAPSHOT_HEADER_LEN * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SnapshotHeader::decode(&g).is_err(),
                "bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn torn_extended_and_rotten_files_are_damage() {
        // Invariant: a file cut short, grown, or with a flipped body bit is
        // refused with the damage named.
        let f = file(b"0123456789");
        assert!(matches!(
            SnapshotHeader::decode(&f[..f.len() - 1]),
            Err(SnapshotDamage::LengthMismatch { .. })
        ));
        assert!(matches!(
            SnapshotHeader::decode(&f[..10]),
            Err(SnapshotDamage::TooShort { len: 10 })
        ));
        let mut g = f.clone();
        g.push(0);
        assert!(matches!(
            SnapshotHeader::decode(&g),
            Err(SnapshotDamage::LengthMismatch { .. })
        ));
        let mut g = f.clone();
        *g.last_mut().unwrap() ^= 0x10;
        let h = SnapshotHeader::decode(&g).unwrap();
        assert!(matches!(h.body(&g), Err(SnapshotDamage::BadBodyCrc { .. })));
    }

    #[test]
    fn a_newer_version_with_a_valid_crc_is_unsupported_not_corrupt() {
        // Invariant: version != 1 with a correct header CRC reads as a newer
        // format; with a wrong CRC it is damage.
        let mut f = file(b"x");
        f[VERSION_OFF..HEADER_LEN_OFF].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            SnapshotHeader::decode(&f),
            Err(SnapshotDamage::BadHeaderCrc { .. })
        ));
        let crc = crc32fast::hash(&f[..HEADER_CRC_OFF]);
        f[HEADER_CRC_OFF..ZERO_OFF].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SnapshotHeader::decode(&f),
            Err(SnapshotDamage::UnsupportedVersion { version: 2 })
        );
    }
}
