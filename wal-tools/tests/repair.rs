//! `wal-dump repair`: a dry run changes nothing, `--apply` leaves exactly
//! the directory the daemon's own recovery leaves, mid-log damage is refused
//! unless `--truncate-at` is given, and a held `LOCK` stops it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::small_options as options;
use wconf::wal::lockfile::DirLock;
use wconf::wal::Wal;

mod common;

fn write_log(dir: &Path, records: u64) -> Vec<PathBuf> {
    common::write_log(dir, records, |i| vec![i as u8 + 1; 100])
}

/// Every file but `LOCK`, by name, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "LOCK")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for (name, bytes) in snapshot(from) {
        std::fs::write(to.join(name), bytes).unwrap();
    }
}

fn dump(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn poke(path: &Path, offset: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[byte], offset).unwrap();
}

/// Tears the last record of the last segment: its last non-zero byte flipped.
fn tear_tail(segments: &[PathBuf]) -> u64 {
    let last = segments.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64;
    poke(last, end, bytes[end as usize] ^ 0xff);
    end
}

#[test]
fn torn_tail_dry_run_changes_nothing_and_apply_matches_the_daemon() {
    // Invariant: a dry run leaves every byte alone; --apply leaves exactly
    // the directory `Wal::open` (the daemon's recovery) leaves.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segments = write_log(dir, 100);
    tear_tail(&segments);
    let last_name = segments
        .last()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let before = snapshot(dir);

    let (code, dry, _) = dump(&["repair", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{dry}");
    assert_eq!(snapshot(dir), before, "a dry run changed the directory");
    assert!(
        dry.contains("would cut:") && dry.contains("dropping from LSN 100 (no readable record)"),
        "{dry}"
    );
    assert!(dry.contains(&format!("{last_name}.broken")), "{dry}");

    let daemon = tempfile::tempdir().unwrap();
    copy_dir(dir, daemon.path());
    let (wal, report) = Wal::open(daemon.path(), options()).unwrap();
    wal.close().unwrap();
    let t = report
        .report
        .truncation
        .expect("the daemon cut the torn tail");

    let (code, applied, err) = dump(&["repair", dir.to_str().unwrap(), "--apply"]);
    assert_eq!(code, 0, "{applied}{err}");
    assert_eq!(snapshot(dir), snapshot(daemon.path()));
    // The dry run announced the same cut that was made.
    let cut_line = format!(
        "at offset {}, dropping from LSN {} (no readable record), {} bytes",
        t.cut_offset, t.first_lsn_dropped, t.bytes_dropped
    );
    assert!(dry.contains(&cut_line), "{dry}\nwant {cut_line}");
    assert!(applied.contains(&cut_line), "{applied}");

    let (code, out, _) = dump(&["verify", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("99 records"), "{out}");
    let (code, out, _) = dump(&["repair", dir.to_str().unwrap(), "--apply"]);
    assert_eq!((code, out.as_str()), (0, "clean: nothing to repair\n"));
}

#[test]
fn mid_log_damage_is_refused_unless_truncate_at_is_given() {
    // Invariant: corruption the daemon would refuse is left alone (exit 2);
    // --truncate-at LSN ends the log just before LSN, the rest set aside.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segments = write_log(dir, 100);
    // Frames are 128 bytes: LSN 5 is at 48 + 4 * 128 = 560 in segment 1.
    poke(&segments[0], 560 + 30, 0x00);
    let before = snapshot(dir);
    for args in [vec!["repair"], vec!["repair", "--apply"]] {
        let mut args = args;
        args.insert(1, dir.to_str().unwrap());
        let (code, out, _) = dump(&args);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("offset 560 (LSN 5)"), "{out}");
        assert!(out.contains("refusing"), "{out}");
        assert_eq!(snapshot(dir), before);
    }
    // An LSN past the damage is not a valid record: refused as usage.
    let (code, _, err) = dump(&["repair", dir.to_str().unwrap(), "--truncate-at", "50"]);
    assert_eq!(code, 64, "{err}");

    let (code, out, _) = dump(&["repair", dir.to_str().unwrap(), "--truncate-at", "3"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("would cut: ") && out.contains("at offset 304, dropping LSN 3..="),
        "{out}"
    );
    assert_eq!(snapshot(dir), before);
    let (code, out, err) = dump(&[
        "repair",
        dir.to_str().unwrap(),
        "--truncate-at",
        "3",
        "--apply",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = dump(&["verify", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 records, last LSN 2"), "{out}");
    // Every dropped byte is still on disk, in side files.
    let broken = snapshot(dir)
        .keys()
        .filter(|n| n.contains(".broken"))
        .count();
    assert_eq!(broken, segments.len());
    let (wal, report) = Wal::open(dir, options()).unwrap();
    assert_eq!(report.report.last_lsn, 2);
    assert!(report.report.truncation.is_none());
    wal.close().unwrap();
}

#[test]
fn apply_refuses_while_the_directory_is_locked() {
    // Invariant: --apply never runs against a live owner; the error names it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segments = write_log(dir, 10);
    tear_tail(&segments);
    let before = snapshot(dir);
    let lock = DirLock::acquire(dir).unwrap();
    let (code, _, err) = dump(&["repair", dir.to_str().unwrap(), "--apply"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!("locked by process {}", std::process::id())),
        "{err}"
    );
    assert_eq!(snapshot(dir), before);
    // A dry run only reads, so it works beside a live daemon.
    let (code, _, _) = dump(&["repair", dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    drop(lock);
    let (code, _, err) = dump(&["repair", dir.to_str().unwrap(), "--apply"]);
    assert_eq!(code, 0, "{err}");
}
