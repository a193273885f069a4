//! Golden segment files: a small log written once by format version 1 and
//! checked in under `tests/golden/wal-v1/`. Every later version must decode
//! those files to exactly the records written out below, and their raw bytes
//! must lay out as `docs/wal-format.md` (and the diagram in
//! `src/wal/format.rs`) say. The expected values are literals on purpose:
//! computing them with today's code would let a format change pass.
//!
//! `WCONF_REGENERATE_GOLDEN=1 cargo test --test it golden` writes the files
//! for a new, empty directory; see `tests/golden/README.md`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use wconf::wal::storage::{ReadView, StdStorage, Storage, StorageFile};
use wconf::wal::{RecoveryMode, Wal, WalOptions, KIND_SKIPPABLE};

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/wal-v1");

/// The options the files were written with. Reading needs none of them but
/// `segment_bytes` (so the writer does not grow the last segment) and a
/// `record_bytes_max` that admits the largest record.
fn options(recovery_mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        record_bytes_max: 1200,
        batch_bytes_max: 4096,
        queue_len_max: 64,
        queue_bytes_max: 1 << 16,
        recovery_mode,
        ..WalOptions::default()
    }
}

/// A payload: `pattern` repeated to `len` bytes.
#[derive(Debug, Clone, Copy)]
struct Payload(&'static [u8], usize);

impl Payload {
    fn bytes(self) -> Vec<u8> {
        self.0.iter().copied().cycle().take(self.1).collect()
    }
}

/// One record as the golden files hold it.
#[derive(Debug)]
struct GoldenRecord {
    lsn: u64,
    /// Index into `SEGMENTS`.
    segment: usize,
    offset: u64,
    frame_len: u32,
    kind: u16,
    flags: u16,
    batch_index: u32,
    crc: u32,
    payload: Payload,
}

#[derive(Debug)]
struct GoldenSegment {
    name: &'static str,
    seq: u64,
    first_lsn: u64,
    prev_crc: u32,
    header_crc: u32,
    /// Offset after the last frame; zeros follow to the end of the file.
    data_end: u64,
}

const FILE_LEN: u64 = 4096;

const SEGMENTS: [GoldenSegment; 3] = [
    GoldenSegment {
        name: "00000000000000000001.wal",
        seq: 0,
        first_lsn: 1,
        prev_crc: 0,
        header_crc: 0x4a69_543a,
        data_end: 4008,
    },
    GoldenSegment {
        name: "00000000000000000010.wal",
        seq: 1,
        first_lsn: 10,
        prev_crc: 0x0972_9eeb,
        header_crc: 0xbb20_e04d,
        data_end: 3720,
    },
    GoldenSegment {
        name: "00000000000000000013.wal",
        seq: 2,
        first_lsn: 13,
        prev_crc: 0xada8_00c1,
        header_crc: 0xff84_c4f0,
        data_end: 504,
    },
];

/// Flag bit 0: last frame of its group-commit batch.
const END: u16 = 1;

const RECORDS: [GoldenRecord; 14] = [
    GoldenRecord {
        lsn: 1,
        segment: 0,
        offset: 48,
        frame_len: 24,
        kind: 1,
        flags: END,
        batch_index: 0,
        crc: 0xda0a_da92,
        payload: Payload(b"", 0),
    },
    GoldenRecord {
        lsn: 2,
        segment: 0,
        offset: 72,
        frame_len: 25,
        kind: 2,
        flags: END,
        batch_index: 0,
        crc: 0x87e6_f225,
        payload: Payload(b"a", 1),
    },
    GoldenRecord {
        lsn: 3,
        segment: 0,
        offset: 104,
        frame_len: 31,
        kind: 0x8003,
        flags: END,
        batch_index: 0,
        crc: 0x2cb1_b1b9,
        payload: Payload(b"seven!!", 7),
    },
    GoldenRecord {
        lsn: 4,
        segment: 0,
        offset: 136,
        frame_len: 32,
        kind: 4,
        flags: 0,
        batch_index: 0,
        crc: 0xb696_1b69,
        payload: Payload(b"eight!!!", 8),
    },
    GoldenRecord {
        lsn: 5,
        segment: 0,
        offset: 168,
        frame_len: 33,
        kind: 5,
        flags: 0,
        batch_index: 1,
        crc: 0x75d3_2b6e,
        payload: Payload(b"nine!!!!!", 9),
    },
    GoldenRecord {
        lsn: 6,
        segment: 0,
        offset: 208,
        frame_len: 124,
        kind: 0x8006,
        flags: END,
        batch_index: 2,
        crc: 0x5566_b53a,
        payload: Payload(b"0123456789", 100),
    },
    GoldenRecord {
        lsn: 7,
        segment: 0,
        offset: 336,
        frame_len: 1224,
        kind: 7,
        flags: END,
        batch_index: 0,
        crc: 0xc069_a76f,
        payload: Payload(b"g", 1200),
    },
    GoldenRecord {
        lsn: 8,
        segment: 0,
        offset: 1560,
        frame_len: 1224,
        kind: 7,
        flags: END,
        batch_index: 0,
        crc: 0xd11b_c230,
        payload: Payload(b"h", 1200),
    },
    GoldenRecord {
        lsn: 9,
        segment: 0,
        offset: 2784,
        frame_len: 1224,
        kind: 7,
        flags: END,
        batch_index: 0,
        crc: 0x0972_9eeb,
        payload: Payload(b"i", 1200),
    },
    GoldenRecord {
        lsn: 10,
        segment: 1,
        offset: 48,
        frame_len: 1224,
        kind: 8,
        flags: END,
        batch_index: 0,
        crc: 0x114c_c0d8,
        payload: Payload(b"j", 1200),
    },
    GoldenRecord {
        lsn: 11,
        segment: 1,
        offset: 1272,
        frame_len: 1224,
        kind: 8,
        flags: END,
        batch_index: 0,
        crc: 0xc925_9c03,
        payload: Payload(b"k", 1200),
    },
    GoldenRecord {
        lsn: 12,
        segment: 1,
        offset: 2496,
        frame_len: 1224,
        kind: 8,
        flags: END,
        batch_index: 0,
        crc: 0xada8_00c1,
        payload: Payload(b"l", 1200),
    },
    GoldenRecord {
        lsn: 13,
        segment: 2,
        offset: 48,
        frame_len: 424,
        kind: 0x7fff,
        flags: END,
        batch_index: 0,
        crc: 0x31d7_5dd6,
        payload: Payload(b"m", 400),
    },
    GoldenRecord {
        lsn: 14,
        segment: 2,
        offset: 472,
        frame_len: 28,
        kind: 0xffff,
        flags: END,
        batch_index: 0,
        crc: 0xba02_a597,
        payload: Payload(b"last", 4),
    },
];

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn golden_path(segment: &GoldenSegment) -> PathBuf {
    Path::new(GOLDEN_DIR).join(segment.name)
}

#[test]
fn golden_segments_decode_to_the_recorded_log() {
    // Invariant: format version 1 files decode, in strict mode, to exactly
    // the records they were written with (LSN, kind, payload, batch position
    // and flags, CRC, place in the file), and a log of them can be continued.
    let tmp = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(GOLDEN_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let expected: Vec<&str> = SEGMENTS.iter().map(|s| s.name).collect();
    assert_eq!(
        names, expected,
        "the golden directory holds exactly the segments"
    );
    // Recover a copy: recovery may repair what it opens, and the checked-in
    // files must never change.
    for name in &names {
        std::fs::copy(Path::new(GOLDEN_DIR).join(name), tmp.path().join(name)).unwrap();
    }
    let (wal, rec) = Wal::open(tmp.path(), options(RecoveryMode::Strict))
        .unwrap_or_else(|e| panic!("golden v1 log refused: {e}"));
    let report = rec.report.clone();
    assert_eq!(report.segments, 3);
    assert_eq!(report.records, 14);
    assert_eq!((report.first_lsn, report.last_lsn), (1, 14));
    assert!(report.truncation.is_none(), "{:?}", report.truncation);
    let got: Vec<_> = rec.records().map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), RECORDS.len());
    for (r, want) in got.iter().zip(&RECORDS) {
        let h = &r.header;
        assert_eq!(
            (r.lsn, r.kind, r.offset),
            (want.lsn, want.kind, want.offset),
            "LSN {}",
            want.lsn
        );
        assert_eq!(
            (h.frame_len, h.flags, h.batch_index, h.crc),
            (want.frame_len, want.flags, want.batch_index, want.crc),
            "LSN {}",
            want.lsn
        );
        assert_eq!(r.payload, &want.payload.bytes()[..], "LSN {}", want.lsn);
    }
    drop(rec);
    assert_eq!(
        wal.append(1, b"continued".to_vec())
            .unwrap()
            .wait()
            .unwrap(),
        15
    );
    drop(wal);
    let (_wal, rec) = Wal::open(tmp.path(), options(RecoveryMode::Strict)).unwrap();
    assert_eq!(rec.report.records, 15);
}

#[test]
fn golden_bytes_match_the_documented_layout() {
    // Invariant: the bytes are where docs/wal-format.md puts them: a 48-byte
    // little-endian segment header (magic at 0, version at 8, header length
    // at 12, sequence at 16, first LSN at 24, previous CRC at 32, reserved at
    // 36, header CRC over bytes 0..40 at 40, zeros to 48); frames from 48,
    // 8-aligned, each a 24-byte header (length at 0, kind at 4, flags at 6,
    // LSN at 8, batch index at 16, CRC over header bytes 0..20 and the
    // payload at 20), the payload, and zero padding; zeros after the last.
    // CRC-32/ISO-HDLC: its check value is 0xcbf43926.
    assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
    // The first header is the one in the worked example of docs/wal-format.md
    // (segment_seq 0, first_lsn 1, prev_crc 0), byte for byte.
    let first = std::fs::read(golden_path(&SEGMENTS[0])).unwrap();
    #[rustfmt::skip]
    let documented: [u8; 48] = [
        0x57, 0x43, 0x4f, 0x4e, 0x46, 0x57, 0x41, 0x4c, 0x01, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3a, 0x54, 0x69, 0x4a, 0x00, 0x00, 0x00, 0x00,
    ];
    assert_eq!(&first[..48], &documented[..]);
    for (i, seg) in SEGMENTS.iter().enumerate() {
        let b = std::fs::read(golden_path(seg)).unwrap();
        let name = seg.name;
        assert_eq!(b.len() as u64, FILE_LEN, "{name}: preallocated length");
        assert_eq!(&b[0..8], b"WCONFWAL", "{name}: magic");
        assert_eq!(u32_at(&b, 8), 1, "{name}: format version");
        assert_eq!(u32_at(&b, 12), 48, "{name}: header length");
        assert_eq!(u64_at(&b, 16), seg.seq, "{name}: sequence");
        assert_eq!(u64_at(&b, 24), seg.first_lsn, "{name}: first LSN");
        assert_eq!(
            name,
            format!("{:020}.wal", seg.first_lsn),
            "named by first LSN"
        );
        assert_eq!(u32_at(&b, 32), seg.prev_crc, "{name}: previous CRC");
        assert_eq!(u32_at(&b, 36), 0, "{name}: reserved");
        assert_eq!(u32_at(&b, 40), seg.header_crc, "{name}: header CRC");
        assert_eq!(
            crc32fast::hash(&b[0..40]),
            seg.header_crc,
            "{name}: header CRC"
        );
        assert_eq!(&b[44..48], &[0; 4], "{name}: header padding");

        // The chain: each header names the CRC of the previous segment's
        // last frame; the first names 0.
        let prev_crc = match i {
            0 => 0,
            _ => RECORDS.iter().rfind(|r| r.segment == i - 1).unwrap().crc,
        };
        assert_eq!(seg.prev_crc, prev_crc, "{name}: chain");

        let mut off = 48usize;
        for r in RECORDS.iter().filter(|r| r.segment == i) {
            let lsn = r.lsn;
            assert_eq!(r.offset as usize, off, "LSN {lsn}: frames are contiguous");
            assert_eq!(off % 8, 0, "LSN {lsn}: aligned");
            let f = &b[off..];
            let payload = r.payload.bytes();
            assert_eq!(u32_at(f, 0), r.frame_len, "LSN {lsn}: length");
            assert_eq!(r.frame_len as usize, 24 + payload.len(), "LSN {lsn}");
            assert_eq!(u16_at(f, 4), r.kind, "LSN {lsn}: kind");
            assert_eq!(u16_at(f, 6), r.flags, "LSN {lsn}: flags");
            assert_eq!(u64_at(f, 8), lsn, "LSN {lsn}: LSN");
            assert_eq!(u32_at(f, 16), r.batch_index, "LSN {lsn}: batch index");
            assert_eq!(u32_at(f, 20), r.crc, "LSN {lsn}: CRC");
            let mut h = crc32fast::Hasher::new();
            h.update(&f[0..20]);
            h.update(&payload);
            assert_eq!(
                h.finalize(),
                r.crc,
                "LSN {lsn}: CRC covers header and payload"
            );
            assert_eq!(
                &f[24..24 + payload.len()],
                &payload[..],
                "LSN {lsn}: payload"
            );
            let padded = (r.frame_len as usize).next_multiple_of(8);
            let padding = &f[r.frame_len as usize..padded];
            assert!(padding.iter().all(|&x| x == 0), "LSN {lsn}: padding");
            off += padded;
        }
        assert_eq!(off as u64, seg.data_end, "{name}: data end");
        assert!(
            b[off..].iter().all(|&x| x == 0),
            "{name}: zeros after the data"
        );
    }
    // Batches: positions count up from 0 and only the last frame is marked.
    let mut expected_index = 0;
    for r in &RECORDS {
        assert_eq!(r.batch_index, expected_index, "LSN {}", r.lsn);
        expected_index = if r.flags & END != 0 {
            0
        } else {
            r.batch_index + 1
        };
    }
    assert!(RECORDS.iter().any(|r| r.kind & KIND_SKIPPABLE != 0));
}

/// The real file system with data syncs the generator can hold, so that
/// records appended meanwhile go out as one batch: the one way to write a
/// multi-record batch deterministically.
#[derive(Clone, Default)]
struct HeldSyncs {
    /// (held, syncs waiting)
    gate: Arc<(Mutex<(bool, usize)>, Condvar)>,
}

impl HeldSyncs {
    fn hold(&self, held: bool) {
        self.gate.0.lock().unwrap().0 = held;
        self.gate.1.notify_all();
    }
    fn wait_until_one_is_held(&self) {
        let mut st = self.gate.0.lock().unwrap();
        while st.1 == 0 {
            st = self.gate.1.wait(st).unwrap();
        }
    }
    fn pass(&self) {
        let mut st = self.gate.0.lock().unwrap();
        st.1 += 1;
        self.gate.1.notify_all();
        while st.0 {
            st = self.gate.1.wait(st).unwrap();
        }
        st.1 -= 1;
    }
}

struct HeldFile {
    file: Box<dyn StorageFile>,
    gate: HeldSyncs,
}

impl StorageFile for HeldFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.gate.pass();
        self.file.sync_data()
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.allocate(len)
    }
}

impl Storage for HeldSyncs {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdStorage.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        StdStorage.list(dir)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        StdStorage.exists(path)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        let file = StdStorage.create_new(path)?;
        Ok(Box::new(HeldFile {
            file,
            gate: self.clone(),
        }))
    }
    fn open_write(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        let file = StdStorage.open_write(path)?;
        Ok(Box::new(HeldFile {
            file,
            gate: self.clone(),
        }))
    }
    fn read(&self, path: &Path) -> std::io::Result<ReadView> {
        StdStorage.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        StdStorage.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdStorage.sync_dir(dir)
    }
}

/// What the generator appends: groups of records, each group one batch.
/// Kept apart from `RECORDS` on purpose (see the module comment).
const GENERATOR_BATCHES: &[&[(u16, Payload)]] = &[
    &[(1, Payload(b"", 0))],
    &[(2, Payload(b"a", 1))],
    &[(KIND_SKIPPABLE | 3, Payload(b"seven!!", 7))],
    &[
        (4, Payload(b"eight!!!", 8)),
        (5, Payload(b"nine!!!!!", 9)),
        (KIND_SKIPPABLE | 6, Payload(b"0123456789", 100)),
    ],
    &[(7, Payload(b"g", 1200))],
    &[(7, Payload(b"h", 1200))],
    &[(7, Payload(b"i", 1200))],
    // Does not fit in the first segment: rolls.
    &[(8, Payload(b"j", 1200))],
    &[(8, Payload(b"k", 1200))],
    &[(8, Payload(b"l", 1200))],
    // Rolls again.
    &[(0x7fff, Payload(b"m", 400))],
    &[(KIND_SKIPPABLE | 0x7fff, Payload(b"last", 4))],
];

#[test]
fn regenerate_golden_files_when_asked() {
    // Invariant: the generator writes only into a missing or empty
    // directory, so it can never silently replace an existing version's
    // files. It runs only with WCONF_REGENERATE_GOLDEN=1.
    if std::env::var_os("WCONF_REGENERATE_GOLDEN").as_deref() != Some("1".as_ref()) {
        return;
    }
    let dir = Path::new(GOLDEN_DIR);
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        assert!(
            entries.next().is_none(),
            "{GOLDEN_DIR} is not empty: golden files of an existing version are never regenerated"
        );
    }
    let storage = HeldSyncs::default();
    let (wal, _) = Wal::open_with(
        Arc::new(storage.clone()),
        dir,
        options(RecoveryMode::Strict),
    )
    .unwrap();
    let mut batches = GENERATOR_BATCHES.iter().peekable();
    while let Some(batch) = batches.next() {
        let [(kind, payload)] = batch else {
            panic!("a multi-record batch must follow a single record, whose sync it queues behind");
        };
        let queued_behind = batches.next_if(|b| b.len() > 1);
        if queued_behind.is_some() {
            storage.hold(true);
        }
        let mut pending = vec![wal.append(*kind, payload.bytes()).unwrap()];
        if let Some(next) = queued_behind {
            // The writer is in this record's sync; it takes everything
            // queued meanwhile as its next batch.
            storage.wait_until_one_is_held();
            pending.extend(next.iter().map(|(k, p)| wal.append(*k, p.bytes()).unwrap()));
            storage.hold(false);
        }
        for a in pending {
            a.wait().unwrap();
        }
    }
    drop(wal);
    // The values to paste into `SEGMENTS` and `RECORDS` after reading them.
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let b = std::fs::read(dir.join(&name)).unwrap();
        let mut off = 48;
        while u32_at(&b, off) != 0 {
            let frame_len = u32_at(&b, off);
            eprintln!(
                "lsn {} offset {off} frame_len {frame_len} kind {:#06x} flags {} batch_index {} crc {:#010x}",
                u64_at(&b, off + 8),
                u16_at(&b, off + 4),
                u16_at(&b, off + 6),
                u32_at(&b, off + 16),
                u32_at(&b, off + 20),
            );
            off += (frame_len as usize).next_multiple_of(8);
        }
        eprintln!(
            "{name}: len {} seq {} first_lsn {} prev_crc {:#010x} header_crc {:#010x} data_end {off}",
            b.len(),
            u64_at(&b, 16),
            u64_at(&b, 24),
            u32_at(&b, 32),
            u32_at(&b, 40),
        );
    }
}
