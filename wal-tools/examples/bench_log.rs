//! Writes a log of daemon-shaped records for `benches/run-wal-dump-bench.sh`:
//! `bench_log DIR BYTES` opens a session, then appends, in a repeating cycle, a
//! grant, a config write that releases `config`, and a one-shot transaction
//! (each patch about 80 bytes of JSON, setting one of 1000 keys, so
//! `state` can replay the whole log), until the frames reach BYTES. It
//! does not wait on each append, so the writer commits full batches and a
//! gigabyte costs a few hundred fsyncs. DIR must not hold a log yet.

use std::path::PathBuf;

use wconf::replay::encode_record;
use wconf::state::{LockMode, LockRequest, Record, SessionId, CONFIG_LOCK};
use wconf::wal::format::frame_bytes;
use wconf::wal::{Wal, WalOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, bytes] = &args[..] else {
        eprintln!("usage: bench_log DIR BYTES");
        std::process::exit(64);
    };
    let dir = PathBuf::from(dir);
    let bytes_wanted: u64 = bytes.parse().expect("BYTES is an integer");
    let (wal, recovered) = Wal::open(&dir, WalOptions::default()).expect("open the log");
    assert_eq!(
        recovered.report.records,
        0,
        "{} already holds a log",
        dir.display()
    );
    drop(recovered);
    let session = SessionId(0x5eed_0000_0000_0000_0000_0000_0000_0001);
    // Opened first, so `state` can replay the whole log.
    let open = Record::SessionOpen {
        session,
        name: Some("bench".into()),
        ttl_ms: 30_000,
    };
    let (kind, payload) = encode_record(&open).expect("encode");
    let mut written = frame_bytes(payload.len()) as u64;
    let mut last = Some(wal.append(kind, payload).expect("append"));
    for i in 0u64.. {
        if written >= bytes_wanted {
            break;
        }
        let patch = format!(
            r#"[{{"op":"add","path":"/nodes-n{}-state","value":"running-{i:0>24}"}}]"#,
            i % 1000
        );
        let record = match i % 3 {
            0 => Record::Grant {
                session,
                locks: vec![LockRequest::new(CONFIG_LOCK, LockMode::Exclusive)],
                token: i + 1,
                request_id: Some(format!("job-{i}-lock")),
            },
            1 => Record::ConfigWrite {
                session: Some(session),
                patch_json: patch,
                release_config: true,
                request_id: Some(format!("job-{i}-write")),
            },
            _ => Record::ConfigWrite {
                session: None,
                patch_json: patch,
                release_config: false,
                request_id: None,
            },
        };
        let (kind, payload) = encode_record(&record).expect("encode");
        written += frame_bytes(payload.len()) as u64;
        last = Some(wal.append(kind, payload).expect("append"));
    }
    if let Some(last) = last {
        last.wait().expect("durable");
    }
    wal.close().expect("close");
    println!("{written}");
}
