//! `wal-dump verify` against real logs: its exit code tells an operator
//! clean, torn tail, corrupt and broken sequence apart.

use std::path::{Path, PathBuf};
use std::process::Command;

use wconf::wal::{Wal, WalOptions};

fn write_log(dir: &Path, records: u64) -> Vec<PathBuf> {
    let options = WalOptions {
        segment_bytes: 4096,
        record_bytes_max: 1024,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir, options).unwrap();
    for i in 0..records {
        wal.append(1, vec![i as u8; 100]).unwrap().wait().unwrap();
    }
    wal.close().unwrap();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments
}

fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
        .arg("verify")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn poke(path: &Path, offset: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[byte], offset).unwrap();
}

#[test]
fn exit_codes_tell_clean_torn_corrupt_and_sequence_apart() {
    // Invariant: 0 clean, 1 torn tail, 2 corruption, 3 segment sequence, 64 usage.
    let tmp = tempfile::tempdir().unwrap();
    let segments = write_log(tmp.path(), 100);
    assert!(segments.len() >= 3);
    let (code, out) = verify(tmp.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("100 records"), "{out}");

    // Frames are 128 bytes here (24 + 100, padded); the last record of the
    // last segment is the torn write.
    let last = segments.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64;
    poke(last, end, bytes[end as usize] ^ 0xff);
    let (code, out) = verify(tmp.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("torn tail:"), "{out}");
    poke(last, end, bytes[end as usize]);

    // A flip in the first frame of the first segment: mid-log corruption.
    poke(&segments[0], 48 + 30, 0x5a);
    let (code, out) = verify(tmp.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("offset 48 (LSN 1)"), "{out}");
    poke(&segments[0], 48 + 30, 0);

    std::fs::remove_file(&segments[1]).unwrap();
    let (code, out) = verify(tmp.path());
    assert_eq!(code, 3, "{out}");

    let (code, _) = verify(&tmp.path().join("missing"));
    assert_eq!(code, 64);
}
