//! Append throughput and latency of the WAL under group commit, on the real
//! disk: closed-loop appenders that each append one record and wait for it to
//! be durable before the next, as request handlers do.
//!
//! - `wal_append/{100,1024}B/appenders/{1,16,64}`: one iteration is
//!   `RECORDS_PER_ITER` durable records across all appenders; criterion's
//!   throughput is records per second.
//! - `wal_append_latency/100B/appenders/1`: one iteration is one record, so
//!   the time per iteration is the latency of a lone append (about one
//!   fdatasync).
//!
//! Every benchmark gets a fresh log, and after it one `wconf-bench` line on
//! stderr (see `common::report`) with the log's group-commit telemetry over
//! warm-up and measurement: records per fsync and fsync latency.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use wconf::wal::format::frame_bytes;
use wconf::wal::{Wal, WalOptions};

const KIND: u16 = 1;
const PAYLOAD_BYTES: [usize; 2] = [100, 1024];
const APPENDERS: [usize; 3] = [1, 16, 64];
/// Durable records in one iteration of a throughput benchmark, across all
/// appenders: one round of the largest appender count.
const RECORDS_PER_ITER: u64 = 64;

fn append_throughput(c: &mut Criterion) {
    let root = common::bench_dir();
    for payload_bytes in PAYLOAD_BYTES {
        let name = format!("wal_append/{payload_bytes}B");
        let mut group = c.benchmark_group(&name);
        // An iteration of a lone appender is 64 fsyncs; flat sampling with
        // fewer samples keeps the minimum run short.
        group.sampling_mode(SamplingMode::Flat).sample_size(20);
        for appenders in APPENDERS {
            let load = Load {
                appenders,
                payload_bytes,
                records_per_iter: RECORDS_PER_ITER,
            };
            bench_closed_loop(&mut group, &name, &root, load);
        }
        group.finish();
    }
}

fn append_latency(c: &mut Criterion) {
    let root = common::bench_dir();
    let name = "wal_append_latency/100B";
    let mut group = c.benchmark_group(name);
    let load = Load {
        appenders: 1,
        payload_bytes: 100,
        records_per_iter: 1,
    };
    bench_closed_loop(&mut group, name, &root, load);
    group.finish();
}

/// One benchmark's load: closed-loop appenders, record size, and how many
/// durable records one iteration is.
#[derive(Debug, Clone, Copy)]
struct Load {
    appenders: usize,
    payload_bytes: usize,
    records_per_iter: u64,
}

/// Benchmarks `load` on a fresh log in `root` as `appenders/<n>` of `group`,
/// then reports the log's telemetry. `group_name` is the name `group` was
/// made with (criterion does not expose it).
fn bench_closed_loop(
    group: &mut BenchmarkGroup<'_, WallTime>,
    group_name: &str,
    root: &Path,
    load: Load,
) {
    let Load {
        appenders,
        payload_bytes,
        records_per_iter,
    } = load;
    let id = format!("appenders/{appenders}");
    let payload: Vec<u8> = (0..payload_bytes).map(|i| i as u8).collect();
    // Opened on first use, so a benchmark that a filter skips costs nothing.
    let mut log: Option<(Wal, tempfile::TempDir)> = None;
    group.throughput(Throughput::Elements(records_per_iter));
    group.bench_function(&id, |b| {
        let (wal, _) = log.get_or_insert_with(|| fresh_log(root));
        b.iter_custom(|iters| closed_loop(wal, appenders, &payload, iters * records_per_iter));
    });
    let Some((wal, dir)) = log else { return };
    let t = wal.telemetry();
    wal.close().expect("close the WAL");
    drop(dir);
    common::report(
        &format!("{group_name}/{id}"),
        &[
            ("payload_bytes", &payload_bytes),
            ("frame_bytes", &frame_bytes(payload_bytes)),
            ("appenders", &appenders),
            ("records_per_iter", &records_per_iter),
            ("records", &t.records),
            ("syncs", &t.syncs),
            (
                "records_per_sync_mean",
                &format_args!("{:.1}", t.records_per_sync_mean),
            ),
            ("records_per_sync_p50", &t.records_per_sync_p50),
            ("sync_us_p50", &t.sync_us_p50),
            ("sync_us_p99", &t.sync_us_p99),
        ],
    );
}

fn fresh_log(root: &Path) -> (Wal, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("wal-append-")
        .tempdir_in(root)
        .expect("create a temporary log directory");
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("open a fresh WAL");
    assert_eq!(recovered.report.records, 0, "a fresh log is empty");
    (wal, dir)
}

/// Makes `records` records durable with `appenders` threads that each append
/// and wait in a loop, and returns the time from the start signal until the
/// last is durable. Thread start-up is outside the timed span.
fn closed_loop(wal: &Wal, appenders: usize, payload: &[u8], records: u64) -> Duration {
    let claimed = AtomicU64::new(0);
    let start = Barrier::new(appenders + 1);
    let started = std::thread::scope(|s| {
        for _ in 0..appenders {
            s.spawn(|| {
                start.wait();
                while claimed.fetch_add(1, Ordering::Relaxed) < records {
                    // The copy is the caller's encoding buffer; 1 KiB is
                    // noise beside an fsync.
                    let appended = wal.append(KIND, payload.to_vec()).expect("append");
                    appended.wait().expect("record durable");
                }
            });
        }
        start.wait();
        Instant::now()
        // The scope joins every appender before it returns.
    });
    started.elapsed()
}

criterion_group!(benches, append_throughput, append_latency);
criterion_main!(benches);
