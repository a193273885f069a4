//! `wal-dump list`, `stats` and `state` on logs written the way the daemon
//! writes them (`Wal` + `replay::encode_record` of real records) and on the
//! golden v1 segments.

use std::path::PathBuf;

use serde_json::Value;
use wconf::replay::encode_record;
use wconf::state::{CloseReason, LockMode, LockRequest, Record, SessionId, State, CONFIG_LOCK};
use wconf::wal::{Wal, WalOptions};

mod common;

use common::{dump, s};

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/wal-v1");

const S1: SessionId = SessionId(0x1111_1111_1111_1111_1111_1111_1111_1111);
const S2: SessionId = SessionId(0x2222_2222_2222_2222_2222_2222_2222_2222);

fn lock(name: &str, mode: LockMode) -> LockRequest {
    LockRequest::new(name, mode)
}

fn write(session: Option<SessionId>, patch: &str, release: bool, req: &str) -> Record {
    Record::ConfigWrite {
        session,
        patch_json: patch.into(),
        release_config: release,
        request_id: Some(req.into()),
    }
}

/// The known log: two daemon lives (epochs 10 s apart), two sessions,
/// locks taken and released, config written by a session and by one-shot
/// transactions. LSN = index + 1.
fn records() -> Vec<Record> {
    vec![
        Record::Epoch {
            epoch: 1,
            started_unix_ms: 1_700_000_000_000,
        },
        Record::SessionOpen {
            session: S1,
            name: Some("node1".into()),
            ttl_ms: 30_000,
        },
        Record::SessionOpen {
            session: S2,
            name: None,
            ttl_ms: 10_000,
        },
        Record::Grant {
            session: S1,
            locks: vec![lock(CONFIG_LOCK, LockMode::Exclusive)],
            token: 1,
            request_id: Some("g1".into()),
        },
        write(
            Some(S1),
            r#"[{"op":"add","path":"/cluster","value":{"name":"c1"}}]"#,
            true,
            "w1",
        ),
        Record::Grant {
            session: S2,
            locks: vec![
                lock("node/a", LockMode::Exclusive),
                lock("node/b", LockMode::Shared),
            ],
            token: 2,
            request_id: Some("g2".into()),
        },
        write(
            None,
            r#"[{"op":"add","path":"/cluster/size","value":3}]"#,
            false,
            "t1",
        ),
        Record::Release {
            session: S2,
            release: vec!["node/a".into()],
            downgrade: vec![],
            request_id: Some("r1".into()),
        },
        Record::Epoch {
            epoch: 2,
            started_unix_ms: 1_700_000_010_000,
        },
        write(
            None,
            r#"[{"op":"add","path":"/clusterx","value":1}]"#,
            false,
            "t2",
        ),
        Record::SessionClose {
            session: S2,
            reason: CloseReason::Expired,
        },
    ]
}

/// Writes `records()` one durable append at a time (so every batch holds
/// one record) and returns the directory.
fn write_log() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let options = common::small_options();
    let (wal, _) = Wal::open(tmp.path(), options).unwrap();
    for r in records() {
        let (kind, payload) = encode_record(&r).unwrap();
        wal.append(kind, payload).unwrap().wait().unwrap();
    }
    wal.close().unwrap();
    tmp
}

fn ndjson(args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend(["--format", "ndjson"]);
    let out = dump(&all);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn lsns(v: &[Value]) -> Vec<u64> {
    v.iter().map(|r| r["lsn"].as_u64().unwrap()).collect()
}

#[test]
fn list_prints_every_record_with_its_fields() {
    // Invariant: one line per record with LSN, type, length, segment@offset,
    // session, request id and the decoded summary; list is the default.
    let tmp = write_log();
    let out = dump(&[s(tmp.path())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), records().len());
    assert_eq!(out.stdout, dump(&["list", s(tmp.path())]).stdout);
    let grant = lines[5];
    assert!(grant.trim_start().starts_with("6 grant"), "{grant}");
    assert!(grant.contains(&S2.to_string()), "{grant}");
    assert!(grant.contains("req g2"), "{grant}");
    assert!(
        grant.contains("take node/a:exclusive,node/b:shared token 2"),
        "{grant}"
    );
    assert!(grant.contains("00000000000000000001.wal@"), "{grant}");
    assert!(lines[4].contains("patch [add /cluster]; release config"));
    assert!(lines[0].contains("epoch 1 started_unix_ms 1700000000000"));
}

#[test]
fn ndjson_records_carry_the_schema_and_decoded_fields() {
    // Invariant: every ndjson line parses and carries the v1 schema name,
    // LSN, type, segment, offset, session, request id and the record.
    let tmp = write_log();
    let recs = ndjson(&[s(tmp.path()), "--raw", "--hex"]);
    assert_eq!(recs.len(), records().len());
    let mut offset = 48;
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["schema"], "wal-dump/list/v1");
        assert_eq!(r["lsn"], i as u64 + 1);
        assert_eq!(r["offset"], offset);
        assert_eq!(r["segment"], "00000000000000000001.wal");
        let raw = &r["raw"];
        assert_eq!(raw["crc_stored"], raw["crc_computed"]);
        assert_eq!(raw["batch_index"], 0);
        assert_eq!(raw["batch_end"], true);
        assert_eq!(
            r["payload_hex"].as_str().unwrap().len(),
            2 * r["len"].as_u64().unwrap() as usize
        );
        offset += raw["padded_len"].as_u64().unwrap();
    }
    let w = &recs[4];
    assert_eq!(w["type"], "config-write");
    assert_eq!(w["kind"], 6);
    assert_eq!(w["session"], S1.to_string());
    assert_eq!(w["request_id"], "w1");
    assert_eq!(w["record"]["patch"][0]["path"], "/cluster");
    assert_eq!(w["record"]["release_config"], true);

    // --format json: one document with the schema and how the log ended.
    let out = dump(&[s(tmp.path()), "--format", "json"]);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["schema"], "wal-dump/list/v1");
    assert_eq!(doc["records"].as_array().unwrap().len(), records().len());
    assert_eq!(doc["end"]["status"], "clean");
    assert_eq!(doc["end"]["last_lsn"], 11);
}

#[test]
fn filters_select_the_right_records() {
    // Invariant: each filter keeps exactly the records it names, and they
    // combine as AND.
    let tmp = write_log();
    let d = s(tmp.path());
    assert_eq!(lsns(&ndjson(&[d, "--from", "3", "--to", "5"])), [3, 4, 5]);
    assert_eq!(lsns(&ndjson(&[d, "--from", "3", "--limit", "2"])), [3, 4]);
    assert_eq!(lsns(&ndjson(&[d, "--type", "epoch"])), [1, 9]);
    assert_eq!(
        lsns(&ndjson(&[d, "--type", "grant", "--type", "5"])),
        [4, 6, 8]
    );
    let s2 = S2.to_string();
    assert_eq!(lsns(&ndjson(&[d, "--session", &s2])), [3, 6, 8, 11]);
    assert_eq!(lsns(&ndjson(&[d, "--lock", "node/a"])), [6, 8]);
    assert_eq!(lsns(&ndjson(&[d, "--lock", "config"])), [4, 5]);
    assert_eq!(lsns(&ndjson(&[d, "--path", "/cluster"])), [5, 7]);
    assert_eq!(lsns(&ndjson(&[d, "--path", "/cluster/size"])), [5, 7]);
    assert_eq!(lsns(&ndjson(&[d, "--path", "/clusterx"])), [10]);
    assert_eq!(
        lsns(&ndjson(&[d, "--session", &s2, "--type", "grant"])),
        [6]
    );

    let out = dump(&["--type", "list"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("config-write"), "{}", out.stdout);
    let out = dump(&[d, "--type", "nope"]);
    assert_eq!(out.code, 64);
    assert!(out.stderr.contains("--type list"), "{}", out.stderr);
    assert_eq!(dump(&[d, "--session", "xyz"]).code, 64);
}

#[test]
fn stats_counts_a_known_log() {
    // Invariant: stats' numbers are those of the log as written: counts per
    // type, one-record batches, the busiest sessions and locks, and the rate
    // between the two epoch records (8 records in 10 s).
    let tmp = write_log();
    let out = dump(&["stats", s(tmp.path()), "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(d["schema"], "wal-dump/stats/v1");
    assert_eq!(d["records"], 11);
    let count = |t: &str| {
        d["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"] == t)
            .map(|x| x["records"].as_u64().unwrap())
    };
    assert_eq!(count("epoch"), Some(2));
    assert_eq!(count("config-write"), Some(3));
    assert_eq!(count("grant"), Some(2));
    assert_eq!(count("session-close"), Some(1));
    let share: f64 = d["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["share"].as_f64().unwrap())
        .sum();
    assert!((share - 1.0).abs() < 1e-9);
    assert_eq!(d["batches"]["count"], 11);
    assert_eq!(d["batches"]["max"], 1);
    assert_eq!(d["top_sessions"][0]["name"], S2.to_string());
    assert_eq!(d["top_sessions"][0]["records"], 4);
    assert_eq!(d["top_locks"][0]["name"], "config");
    assert_eq!(d["rate"]["records"], 8);
    assert_eq!(d["rate"]["records_per_second"], 0.8);
    let b = &d["bytes"];
    assert_eq!(
        b["frames"].as_u64().unwrap(),
        b["payload"].as_u64().unwrap()
            + b["frame_headers"].as_u64().unwrap()
            + b["padding"].as_u64().unwrap()
    );
    assert_eq!(b["capacity"], 4096);

    let text = dump(&["stats", s(tmp.path())]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.contains("rate: 0.80 records/s"),
        "{}",
        text.stdout
    );
}

#[test]
fn stats_on_the_golden_log_sees_its_batch_of_three() {
    // Invariant: batch sizes come from the frames: the golden log has 12
    // batches, one of them LSN 4..6.
    let out = dump(&["stats", GOLDEN_DIR, "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(d["records"], 14);
    assert_eq!(d["batches"]["count"], 12);
    assert_eq!(d["batches"]["max"], 3);
    assert_eq!(d["batches"]["p50"], 1);
    assert_eq!(d["segments"].as_array().unwrap().len(), 3);
    assert_eq!(d["bytes"]["capacity"], 3 * 4096);
}

#[test]
fn golden_segments_list_with_offsets_and_batch_positions() {
    // Invariant: the golden log lists 14 records with the offsets, segments
    // and batch positions golden.rs pins; unknown kinds are named, not fatal.
    let recs = ndjson(&[GOLDEN_DIR, "--raw"]);
    assert_eq!(lsns(&recs), (1..=14).collect::<Vec<_>>());
    assert_eq!(recs[0]["offset"], 48);
    assert_eq!(recs[1]["offset"], 72);
    assert_eq!(recs[2]["type"], "skippable-0x8003");
    let batch: Vec<(u64, bool)> = recs[3..6]
        .iter()
        .map(|r| {
            (
                r["raw"]["batch_index"].as_u64().unwrap(),
                r["raw"]["batch_end"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(batch, [(0, false), (1, false), (2, true)]);
    assert_eq!(recs[9]["segment"], "00000000000000000010.wal");
    assert_eq!(recs[9]["offset"], 48);
    assert_eq!(recs[13]["segment"], "00000000000000000013.wal");

    // One segment file on its own.
    let seg = PathBuf::from(GOLDEN_DIR).join("00000000000000000013.wal");
    assert_eq!(lsns(&ndjson(&[s(&seg)])), [13, 14]);
}

/// The state JSON the test expects, built from a `State` directly.
fn expected(state: &State) -> (Value, u64, Value) {
    let mut locks = serde_json::Map::new();
    for (name, holders) in state.locks().held() {
        let h: serde_json::Map<String, Value> = holders
            .iter()
            .map(|(s, hold)| {
                let mode = match hold.mode {
                    LockMode::Shared => "shared",
                    LockMode::Exclusive => "exclusive",
                };
                (
                    s.to_string(),
                    serde_json::json!({"mode": mode, "token": hold.token}),
                )
            })
            .collect();
        locks.insert(name.to_string(), Value::Object(h));
    }
    (
        state.config().doc().to_value(),
        state.config().serial(),
        Value::Object(locks),
    )
}

#[test]
fn state_at_every_lsn_equals_a_state_replay() {
    // Invariant: `state --at L` prints the config, serial and lock table
    // that applying records 1..=L to a fresh State gives.
    let tmp = write_log();
    let mut state = State::new();
    for (i, r) in std::iter::once(None)
        .chain(records().into_iter().map(Some))
        .enumerate()
    {
        let lsn = i as u64;
        if let Some(r) = r {
            state.apply(lsn, &r).unwrap();
        }
        let out = dump(&["state", s(tmp.path()), "--at", &lsn.to_string()]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let got: Value = serde_json::from_str(&out.stdout).unwrap();
        let (doc, serial, locks) = expected(&state);
        assert_eq!(got["schema"], "wal-dump/state/v1");
        assert_eq!(got["lsn"], lsn);
        assert_eq!(got["config"]["doc"], doc, "LSN {lsn}");
        assert_eq!(got["config"]["serial"], serial, "LSN {lsn}");
        assert_eq!(got["locks"], locks, "LSN {lsn}");
    }
    let out = dump(&["state", s(tmp.path()), "--at", "12"]);
    assert_eq!(out.code, 64);
    assert!(out.stderr.contains("past the end"), "{}", out.stderr);
}

#[test]
fn state_diff_is_the_json_patch_between_two_lsns() {
    // Invariant: --diff A B prints the RFC 6902 patch from the state at A to
    // the state at B.
    let tmp = write_log();
    let out = dump(&["state", s(tmp.path()), "--diff", "4", "5"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(d["schema"], "wal-dump/state-diff/v1");
    let ops = d["patch"].as_array().unwrap();
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/config/doc/cluster"), "{paths:?}");
    assert!(paths.contains(&"/config/serial"), "{paths:?}");
    assert!(paths.contains(&"/locks/config"), "{paths:?}");
}

#[test]
fn errors_have_clear_messages_and_exit_codes() {
    // Invariant: a missing directory, a file that is not a segment and an
    // unknown format version fail with a message and a documented code.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    for sub in ["list", "stats", "state"] {
        let mut args = vec![sub, s(&missing)];
        if sub == "state" {
            args.extend(["--at", "1"]);
        }
        let out = dump(&args);
        assert_eq!(out.code, 64, "{sub}: {}", out.stderr);
        assert!(out.stderr.contains("missing"), "{sub}: {}", out.stderr);
    }

    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a WAL segment at all, really").unwrap();
    let out = dump(&[s(&text)]);
    assert_eq!(out.code, 64);
    assert!(
        out.stderr.contains("not a wconf WAL segment"),
        "{}",
        out.stderr
    );

    // A v2 header with a correct CRC: a newer writer, not damage.
    let newer = tempfile::tempdir().unwrap();
    let mut seg =
        std::fs::read(PathBuf::from(GOLDEN_DIR).join("00000000000000000001.wal")).unwrap();
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&seg[0..40]);
    seg[40..44].copy_from_slice(&crc.to_le_bytes());
    let path = newer.path().join("00000000000000000001.wal");
    std::fs::write(&path, &seg).unwrap();
    for args in [vec![s(newer.path())], vec![s(&path)]] {
        let out = dump(&args);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("version 2"), "{}", out.stderr);
    }

    let out = dump(&["state", s(tmp.path())]);
    assert_eq!(out.code, 64);

    // State needs the log from LSN 1 (no snapshots yet), and records that
    // decode: the golden payloads are test bytes, not daemon records.
    let late = tempfile::tempdir().unwrap();
    let name = "00000000000000000013.wal";
    std::fs::copy(PathBuf::from(GOLDEN_DIR).join(name), late.path().join(name)).unwrap();
    let out = dump(&["state", s(late.path()), "--at", "14"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("starts at LSN 13"), "{}", out.stderr);
    let out = dump(&["state", GOLDEN_DIR, "--at", "2"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("LSN 1"), "{}", out.stderr);
    for sub in ["list", "stats", "state", "verify"] {
        let out = dump(&[sub, "--help"]);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("Example"), "{sub}: {}", out.stdout);
    }
}

#[test]
fn list_stops_cleanly_at_a_torn_tail_and_fails_on_mid_log_damage() {
    // Invariant: a torn last batch (what a live writer's in-flight batch can
    // look like) ends the listing with exit 0 and a note; damage in the
    // middle prints what precedes it and exits 2.
    let tmp = write_log();
    let seg = tmp.path().join("00000000000000000001.wal");
    let bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    let poke = |off: usize, b: u8| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[b], off as u64).unwrap();
    };
    poke(end, bytes[end] ^ 0xff);
    let out = dump(&[s(tmp.path()), "--format", "ndjson"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 10);
    assert!(out.stderr.contains("torn"), "{}", out.stderr);
    poke(end, bytes[end]);

    poke(48 + 30, bytes[48 + 30] ^ 0x5a);
    let out = dump(&[s(tmp.path())]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 0);
    assert!(out.stderr.contains("offset 48 (LSN 1)"), "{}", out.stderr);
}

#[test]
fn a_live_writers_directory_reads_up_to_its_durable_end() {
    // Invariant: with the writer still running (the directory locked, the
    // segment preallocated), wal-dump reads exactly the durable records,
    // ends cleanly at the zeros, and sees later appends on the next run.
    let tmp = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 1 << 20,
        record_bytes_max: 1024,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(tmp.path(), options).unwrap();
    let all = records();
    for r in &all[..5] {
        let (kind, payload) = encode_record(r).unwrap();
        wal.append(kind, payload).unwrap().wait().unwrap();
    }
    let read = || {
        let out = dump(&[s(tmp.path()), "--format", "json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stderr.is_empty(), "{}", out.stderr);
        serde_json::from_str::<Value>(&out.stdout).unwrap()
    };
    let doc = read();
    assert_eq!(doc["records"].as_array().unwrap().len(), 5);
    assert_eq!(doc["end"]["status"], "clean");
    let (kind, payload) = encode_record(&all[5]).unwrap();
    wal.append(kind, payload).unwrap().wait().unwrap();
    assert_eq!(read()["end"]["last_lsn"], 6);
    let out = dump(&["state", s(tmp.path()), "--at", "6"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wal.close().unwrap();
}

#[test]
fn segment_files_can_be_named_one_by_one() {
    // Invariant: explicit segment files are listed in the order given, each
    // read on its own; a non-segment among them is a usage error.
    let dir = PathBuf::from(GOLDEN_DIR);
    let a = dir.join("00000000000000000010.wal");
    let b = dir.join("00000000000000000013.wal");
    assert_eq!(lsns(&ndjson(&[s(&a), s(&b)])), [10, 11, 12, 13, 14]);
    let readme = dir.join("../README.md");
    let out = dump(&[s(&a), s(&readme)]);
    assert_eq!(out.code, 64);
    assert!(
        out.stderr.contains("not a wconf WAL segment"),
        "{}",
        out.stderr
    );
}
