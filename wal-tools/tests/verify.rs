//! `wal-dump verify` against real logs: its exit code tells an operator
//! clean, torn tail, corrupt and broken sequence apart.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

/// LSN i+1 carries 100 bytes of value i, so LSN 1's payload is all zeros.
fn write_log(dir: &Path, records: u64) -> Vec<PathBuf> {
    common::write_log(dir, records, |i| vec![i as u8; 100])
}

fn verify(dir: &Path) -> (i32, String) {
    verify_args(&[dir.to_str().unwrap()])
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

fn verify_args(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn salvage_reports_every_damaged_region_with_a_hexdump() {
    // Invariant: --salvage goes past damage and names each region (file,
    // offset, LSN, kind) with the bytes around it; the exit code stays the
    // first damage's.
    let tmp = tempfile::tempdir().unwrap();
    let segments = write_log(tmp.path(), 100);
    // 128-byte frames, 31 a segment: LSN 5 is at 48 + 4 * 128 = 560 of the
    // first segment, LSN 32 + 2 = 34 at 48 + 2 * 128 = 304 of the second.
    poke(&segments[0], 560 + 40, 0xee);
    poke(&segments[1], 304 + 40, 0xee);
    let dir = tmp.path().to_str().unwrap();
    let first = segments[0].display();
    let second = segments[1].display();

    let (code, out) = verify_args(&[dir]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with(&format!(
            "corrupt: {first} at offset 560 (LSN 5): frame CRC mismatch"
        )),
        "{out}"
    );
    // 64 bytes either side, 16 a line: 0x1f0..0x270, the damage line marked.
    assert!(out.contains("\n  > 00000230: "), "{out}");
    assert!(out.contains("\n    000001f0: "), "{out}");
    assert!(!out.contains("damage 2"), "{out}");

    let (code, out) = verify_args(&[dir, "--salvage"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "damage 1: {first} at offset 560 (LSN 5): frame CRC mismatch"
        )),
        "{out}"
    );
    assert!(out.contains("resumed at offset 688 (LSN 6)"), "{out}");
    assert!(
        out.contains(&format!(
            "damage 2: {second} at offset 304 (LSN 34): frame CRC mismatch"
        )),
        "{out}"
    );
    assert!(out.contains("resumed at offset 432 (LSN 35)"), "{out}");
    assert!(out.contains("\n  > 00000130: "), "{out}");
    assert!(
        out.contains("salvage: 2 damaged regions; 98 frames with a valid CRC"),
        "{out}"
    );
}

#[test]
fn a_swapped_segment_is_a_sequence_error() {
    // Invariant: segments whose contents trade places exit 3, at offset 0
    // of the first misplaced file, with the LSN its name promises.
    let tmp = tempfile::tempdir().unwrap();
    let segments = write_log(tmp.path(), 100);
    let a = std::fs::read(&segments[1]).unwrap();
    let b = std::fs::read(&segments[2]).unwrap();
    std::fs::write(&segments[1], b).unwrap();
    std::fs::write(&segments[2], a).unwrap();
    let (code, out) = verify(tmp.path());
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with(&format!(
            "segment sequence broken: {} at offset 0 (LSN 32): file named for LSN 32 holds a segment starting at 63",
            segments[1].display()
        )),
        "{out}"
    );
}

#[test]
fn trailing_garbage_is_a_torn_tail_at_the_end_of_the_log() {
    // Invariant: non-zero bytes after the last frame are what a torn write
    // leaves: exit 1, at the offset just past the last frame.
    let tmp = tempfile::tempdir().unwrap();
    let segments = write_log(tmp.path(), 100);
    let last = segments.last().unwrap();
    // 100 records, 31 a segment: the last segment holds LSN 94..=100, so it
    // ends at 48 + 7 * 128 = 944.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.write_all_at(b"garbage!", 944 + 8).unwrap();
    let (code, out) = verify(tmp.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!(
            "torn tail: {} at offset 944 (LSN 101): non-zero bytes after the end of written data; \
             the daemon would cut at offset 944 and keep LSNs below 101",
            last.display()
        )),
        "{out}"
    );
    assert!(out.contains("garbage!"), "{out}");
}

/// A log of 10 records whose last segment has a sparse 300 MiB
/// preallocated tail: over the progress floor without writing 300 MiB.
fn large_log(dir: &Path) {
    let segments = write_log(dir, 10);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segments.last().unwrap())
        .unwrap();
    f.set_len(300 << 20).unwrap();
}

fn large_log_runs() -> [Vec<&'static str>; 3] {
    [vec!["verify"], vec!["stats"], vec!["state", "--at", "0"]]
}

#[test]
fn a_large_log_shows_no_progress_when_stderr_is_not_a_terminal() {
    // Invariant: the progress bar (logs over 256 MiB) is for terminals only;
    // a pipe sees nothing on stderr, from verify, stats and state alike.
    let tmp = tempfile::tempdir().unwrap();
    large_log(tmp.path());
    for args in large_log_runs() {
        let out = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
            .arg(args[0])
            .arg(tmp.path())
            .args(&args[1..])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_large_log_shows_a_byte_counting_bar_on_a_terminal() {
    // Invariant: with stderr on a terminal, verify and stats on a log over
    // 256 MiB draw a bar that counts the log's bytes, labelled with the pass
    // it measures; stdout still carries only the result. (`state` opens the
    // log through the same `Log::open` as `stats`; each run scans 300 MiB,
    // so the test keeps to two.)
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    large_log(tmp.path());
    for (args, label) in large_log_runs().into_iter().zip(["verifying", "scanning"]) {
        let pty = nix::pty::openpty(None, None).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
            .arg(args[0])
            .arg(tmp.path())
            .args(&args[1..])
            .stderr(std::process::Stdio::from(pty.slave))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains(label), "{args:?}: {stdout}");
        // The child has exited and our copy of the slave is closed, so the
        // master reads what was written and then fails (EIO): no blocking.
        let mut master = std::fs::File::from(pty.master);
        let mut seen = vec![];
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.contains(label), "{args:?}: {seen:?}");
        assert!(seen.contains("300.00 MiB"), "{args:?}: {seen:?}");
    }
}
