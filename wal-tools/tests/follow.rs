//! `wal-dump follow` against a writer appending while it runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use wconf::wal::Wal;

mod common;

#[test]
fn follow_prints_durable_records_in_order_across_segment_rolls() {
    // Invariant: every record the writer makes durable is printed once, in
    // LSN order, across segment rolls; SIGINT ends follow with exit 0.
    let tmp = tempfile::tempdir().unwrap();
    let options = common::small_options();
    let (wal, _) = Wal::open(tmp.path(), options).unwrap();
    // Ten records before follow starts, the rest while it runs.
    for i in 0..10u64 {
        wal.append(1, vec![i as u8 + 1; 100])
            .unwrap()
            .wait()
            .unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
        .args(["follow", tmp.path().to_str().unwrap(), "--format", "ndjson"])
        .args(["--from", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // 100-byte payloads make 128-byte frames, 31 a 4096-byte segment: LSN
    // 1..=100 spans four segments.
    let writer = std::thread::spawn(move || {
        for i in 10..100u64 {
            wal.append(1, vec![i as u8 + 1; 100])
                .unwrap()
                .wait()
                .unwrap();
        }
        wal
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut segments = vec![];
    for want in 3..=100u64 {
        let line = lines.next().expect("follow ended early").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["lsn"], want, "{line}");
        assert_eq!(v["schema"], "wal-dump/list/v1");
        let seg = v["segment"].as_str().unwrap().to_string();
        if segments.last() != Some(&seg) {
            segments.push(seg);
        }
    }
    assert_eq!(
        segments,
        [
            "00000000000000000001.wal",
            "00000000000000000032.wal",
            "00000000000000000063.wal",
            "00000000000000000094.wal"
        ]
    );
    writer.join().unwrap().close().unwrap();
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGINT is a clean stop");
    assert!(lines.next().is_none(), "nothing past LSN 100");
}
