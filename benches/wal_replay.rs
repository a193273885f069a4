//! Replay throughput: `Wal::open` (recovery validates every segment) plus one
//! pass over every record, touching each payload, from a warm page cache.
//!
//! The log is `WCONF_BENCH_REPLAY_BYTES` bytes of frames (default 1 GB) of
//! 100-byte records, built once and kept under `target/tmp/wconf-bench`,
//! keyed by format version, record size and log size, so repeated runs do not
//! rewrite it. When criterion only smoke-tests (`cargo test --benches`) the
//! log is `LOG_BYTES_TEST`, whatever the variable says.
//!
//! Criterion's throughput is log bytes per second; the `wconf-bench` line
//! after the run adds records per second and the split between recovery and
//! iteration.

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use wconf::wal::format::{frame_bytes, FORMAT_VERSION};
use wconf::wal::{Wal, WalOptions};

const KIND: u16 = 1;
const PAYLOAD_BYTES: usize = 100;
const LOG_BYTES_ENV: &str = "WCONF_BENCH_REPLAY_BYTES";
const LOG_BYTES_DEFAULT: u64 = 1_000_000_000;
const LOG_BYTES_TEST: u64 = 4_000_000;
/// Written into a cached log directory after the log is complete and closed;
/// a directory without it is an interrupted build and is built again.
const COMPLETE_MARKER: &str = "COMPLETE";

fn log_bytes() -> u64 {
    if !common::measuring() {
        return LOG_BYTES_TEST;
    }
    match std::env::var(LOG_BYTES_ENV) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{LOG_BYTES_ENV}={v:?}: {e}")),
        Err(_) => LOG_BYTES_DEFAULT,
    }
}

fn replay(c: &mut Criterion) {
    let bytes_wanted = log_bytes();
    let frame = frame_bytes(PAYLOAD_BYTES) as u64;
    let records = bytes_wanted.div_ceil(frame);
    let log_bytes = records * frame;
    let name = format!("wal_replay/{PAYLOAD_BYTES}B");
    let id = format!("{}MB", log_bytes / 1_000_000);

    let mut group = c.benchmark_group(&name);
    // One iteration reads the whole log (seconds at 1 GB): as few samples as
    // criterion allows.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    group.throughput(Throughput::Bytes(log_bytes));
    // Built on first use, so `--list` or a filter that skips this costs nothing.
    let mut dir: Option<PathBuf> = None;
    let mut open_total = Duration::ZERO;
    let mut iterate_total = Duration::ZERO;
    let mut passes = 0u32;
    group.bench_function(&id, |b| {
        let dir = dir.get_or_insert_with(|| cached_log(&common::bench_dir(), records));
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                let (open, iterate) = open_and_iterate(dir, records, log_bytes);
                open_total += open;
                iterate_total += iterate;
                passes += 1;
                measured += open + iterate;
            }
            measured
        });
    });
    group.finish();
    if passes == 0 {
        return;
    }
    let pass_s = (open_total + iterate_total).as_secs_f64() / f64::from(passes);
    common::report(
        &format!("{name}/{id}"),
        &[
            ("payload_bytes", &PAYLOAD_BYTES),
            ("frame_bytes", &frame),
            ("records", &records),
            ("log_bytes", &log_bytes),
            ("passes", &passes),
            (
                "open_ms_mean",
                &format_args!("{:.1}", open_total.as_secs_f64() * 1e3 / f64::from(passes)),
            ),
            (
                "iterate_ms_mean",
                &format_args!(
                    "{:.1}",
                    iterate_total.as_secs_f64() * 1e3 / f64::from(passes)
                ),
            ),
            (
                "records_per_s_mean",
                &format_args!("{:.0}", records as f64 / pass_s),
            ),
            (
                "log_mb_per_s_mean",
                &format_args!("{:.1}", log_bytes as f64 / pass_s / 1e6),
            ),
        ],
    );
}

/// Opens the log in `dir` and reads every record, touching each payload.
/// Returns the time to open (recovery) and the time to iterate; closing is
/// not timed.
fn open_and_iterate(dir: &Path, records: u64, log_bytes: u64) -> (Duration, Duration) {
    let started = Instant::now();
    let (wal, recovered) = Wal::open(dir, WalOptions::default()).expect("open the cached log");
    let opened = Instant::now();
    let mut count = 0u64;
    let mut sum = 0u64;
    for record in recovered.records() {
        let record = record.expect("cached log is valid");
        count += 1;
        sum = sum.wrapping_add(u64::from(record.payload[0]) + record.payload.len() as u64);
    }
    black_box(sum);
    let iterated = Instant::now();
    assert_eq!(count, records, "the cached log holds every record");
    assert_eq!(
        recovered.report.bytes, log_bytes,
        "the cached log has the expected size"
    );
    drop(recovered);
    wal.close().expect("close the cached log");
    (opened - started, iterated - opened)
}

/// The directory of a complete log of `records` records of `PAYLOAD_BYTES`,
/// built now unless a previous run left one.
fn cached_log(root: &Path, records: u64) -> PathBuf {
    let dir = root.join(format!(
        "replay-v{FORMAT_VERSION}-{PAYLOAD_BYTES}B-{records}records"
    ));
    if dir.join(COMPLETE_MARKER).exists() {
        return dir;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove an incomplete cached log");
    }
    eprintln!(
        "building a replay log of {records} records in {} (once)",
        dir.display()
    );
    let started = Instant::now();
    build_log(&dir, records);
    std::fs::write(dir.join(COMPLETE_MARKER), format!("{records}\n"))
        .expect("mark the cached log complete");
    eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());
    dir
}

/// Writes `records` records without waiting on each: the single appender
/// blocks only when the queue is full, so the writer commits batches of
/// `batch_bytes_max` and the build costs a few hundred fsyncs, not millions.
fn build_log(dir: &Path, records: u64) {
    let (wal, recovered) = Wal::open(dir, WalOptions::default()).expect("create the replay log");
    assert_eq!(recovered.report.records, 0, "a new replay log starts empty");
    let mut payload = vec![0xa5u8; PAYLOAD_BYTES];
    let mut last = None;
    for i in 0..records {
        // Distinct payloads, so no two frames are alike.
        payload[..8].copy_from_slice(&i.to_le_bytes());
        last = Some(wal.append(KIND, payload.clone()).expect("append"));
    }
    // LSNs become durable in order: the last one covers all before it.
    if let Some(last) = last {
        last.wait().expect("replay log durable");
    }
    wal.close().expect("close the replay log");
}

criterion_group!(benches, replay);
criterion_main!(benches);
