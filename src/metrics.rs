//! The daemon's Prometheus metrics (`GET /metrics`): one registry per
//! server, the counters, gauges and histograms that the request middleware
//! and the actors update, and the WAL's own telemetry, read at scrape time.
//!
//! Every server owns its registry (never the process-wide default one), so
//! several servers in one process (`server::start_in_process`) keep apart.
//! A scrape reads atomics and the WAL's telemetry only: it never waits for
//! an actor, so it answers while the lock actor is busy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::wal::{BucketCounts, Wal};

/// The `route` label of a request that no route handled: an unknown path,
/// or a request a middleware refused before routing.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request latency buckets, in seconds: 100 µs to a minute (an acquire
/// may wait up to an hour; those land in `+Inf`).
const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 60.0,
];
/// Lock wait buckets, in seconds: the lock actor's clock counts whole
/// milliseconds, so the first bucket is 1 ms; `WAIT_MS_MAX` is an hour.
const LOCK_WAIT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3_600.0,
];
/// Snapshot buckets, in seconds: a small state to a 100 MB config on a
/// slow disk.
const SNAPSHOT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The actors whose mailbox depth is exported (`wconf_mailbox_depth{actor}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxOf {
    Lock,
    Config,
    Wal,
}

impl MailboxOf {
    const ALL: [MailboxOf; 3] = [MailboxOf::Lock, MailboxOf::Config, MailboxOf::Wal];

    fn label(self) -> &'static str {
        match self {
            MailboxOf::Lock => "lock",
            MailboxOf::Config => "config",
            MailboxOf::Wal => "wal",
        }
    }
}

/// One server's metrics. Cheap to update from any thread: every metric is
/// an atomic (or a few) behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    mailbox_depth: IntGaugeVec,
    lock_waits: IntCounter,
    lock_wait_seconds: Histogram,
    locks_held: IntGauge,
    lock_waiters: IntGauge,
    sessions: IntGauge,
    sessions_expired: IntCounter,
    snapshot_seconds: Histogram,
    snapshot_last_lsn: IntGauge,
    recovery_seconds: Gauge,
    recovery_records: IntGauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Registers `metric` and hands it back. Names and options are constants,
/// so a failure here is a programming error caught by the unit tests.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric options are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let metrics = Metrics {
            http_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wconf_http_requests_total",
                        "HTTP requests answered, by route pattern, method and status.",
                    ),
                    &["route", "method", "status"],
                ),
            ),
            http_seconds: register(
                &r,
                HistogramVec::new(
                    histogram_opts(
                        "wconf_http_request_duration_seconds",
                        "Time from receiving a request to its response, by route pattern.",
                        REQUEST_SECONDS_BUCKETS,
                    ),
                    &["route"],
                ),
            ),
            mailbox_depth: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wconf_mailbox_depth",
                        "Messages sent to an actor that it has not started handling.",
                    ),
                    &["actor"],
                ),
            ),
            lock_waits: register(
                &r,
                IntCounter::new(
                    "wconf_lock_waits_total",
                    "Acquires and transactions that queued as waiters.",
                ),
            ),
            lock_wait_seconds: register(
                &r,
                Histogram::with_opts(histogram_opts(
                    "wconf_lock_wait_seconds",
                    "Time from queueing as a waiter to the grant (granted waits only).",
                    LOCK_WAIT_SECONDS_BUCKETS,
                )),
            ),
            locks_held: register(
                &r,
                IntGauge::new(
                    "wconf_locks_held",
                    "Distinct lock names held by at least one session.",
                ),
            ),
            lock_waiters: register(
                &r,
                IntGauge::new("wconf_lock_waiters", "Waiters queued for locks."),
            ),
            sessions: register(&r, IntGauge::new("wconf_sessions", "Open sessions.")),
            sessions_expired: register(
                &r,
                IntCounter::new(
                    "wconf_sessions_expired_total",
                    "Sessions closed because their lease ran out.",
                ),
            ),
            snapshot_seconds: register(
                &r,
                Histogram::with_opts(histogram_opts(
                    "wconf_snapshot_duration_seconds",
                    "Time to write and sync one snapshot.",
                    SNAPSHOT_SECONDS_BUCKETS,
                )),
            ),
            snapshot_last_lsn: register(
                &r,
                IntGauge::new(
                    "wconf_snapshot_last_lsn",
                    "LSN of the newest durable snapshot: the one this start recovered from, or a newer one written since (0: none).",
                ),
            ),
            recovery_seconds: register(
                &r,
                Gauge::new(
                    "wconf_recovery_duration_seconds",
                    "Time this start spent validating the log and replaying it.",
                ),
            ),
            recovery_records: register(
                &r,
                IntGauge::new(
                    "wconf_recovery_records_replayed",
                    "Records replayed into the state at this start.",
                ),
            ),
            registry: r,
        };
        // Present (at 0) from the first scrape, so a dashboard sees every
        // actor before its first message.
        for actor in MailboxOf::ALL {
            metrics.mailbox(actor);
        }
        metrics
    }

    /// Exports `wal`'s telemetry, durable LSN and segment bytes, read at
    /// every scrape (the commit path pays nothing for it).
    pub fn watch_wal(&self, wal: Arc<Wal>) {
        self.registry
            .register(Box::new(WalCollector::new(wal)))
            .expect("WAL metric names are unique and valid");
    }

    /// The depth gauge of one actor's mailbox.
    pub fn mailbox(&self, actor: MailboxOf) -> IntGauge {
        self.mailbox_depth.with_label_values(&[actor.label()])
    }

    /// One answered request. `route` is the route pattern (bounded by the
    /// route table), never the raw path.
    pub fn observe_request(&self, route: &str, method: &str, status: &str, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc();
        self.http_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// The lock actor's tables after a step.
    pub fn lock_tables(&self, sessions: usize, locks_held: usize, waiters: usize) {
        self.sessions.set(sessions as i64);
        self.locks_held.set(locks_held as i64);
        self.lock_waiters.set(waiters as i64);
    }

    /// A request queued as a waiter.
    pub fn lock_wait_started(&self) {
        self.lock_waits.inc();
    }

    /// A waiter was granted after waiting `waited_ms`.
    pub fn lock_wait_granted(&self, waited_ms: u64) {
        self.lock_wait_seconds.observe(waited_ms as f64 / 1_000.0);
    }

    pub fn sessions_expired(&self, count: usize) {
        self.sessions_expired.inc_by(count as u64);
    }

    /// A snapshot as of `lsn` is durable; writing it took `elapsed`.
    pub fn snapshot_written(&self, elapsed: Duration, lsn: u64) {
        self.snapshot_seconds.observe(elapsed.as_secs_f64());
        self.snapshot_last_lsn.set(lsn as i64);
    }

    /// What this start's recovery did; `snapshot_lsn` is the LSN of the
    /// snapshot it started from, if any, so the gauge of the newest
    /// snapshot is right from the start.
    pub fn recovered(&self, elapsed: Duration, records_replayed: u64, snapshot_lsn: Option<u64>) {
        self.recovery_seconds.set(elapsed.as_secs_f64());
        self.recovery_records.set(records_replayed as i64);
        if let Some(lsn) = snapshot_lsn {
            self.snapshot_last_lsn.set(lsn as i64);
        }
    }

    /// The scrape body, in the Prometheus text format. Reads the segment
    /// directory, so call it off the async threads.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the text encoder accepts what the registry gathered")
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub fn content_type() -> &'static str {
    prometheus::TEXT_FORMAT
}

const SYNC_SECONDS: (&str, &str) = (
    "wconf_wal_sync_seconds",
    "Latency of one fdatasync of a group commit.",
);
const SYNCS: (&str, &str) = ("wconf_wal_syncs_total", "Group commits synced.");
const RECORDS: (&str, &str) = ("wconf_wal_records_total", "Records made durable.");
const BYTES: (&str, &str) = (
    "wconf_wal_bytes_total",
    "Bytes made durable (frames with headers and padding).",
);
const RECORDS_PER_SYNC: (&str, &str) =
    ("wconf_wal_records_per_sync", "Records in one group commit.");
const BYTES_PER_SYNC: (&str, &str) = (
    "wconf_wal_bytes_per_sync",
    "Bytes written by one group commit.",
);
const LOG_BYTES: (&str, &str) = (
    "wconf_wal_log_bytes",
    "Bytes of the segment files in the log directory (preallocated size).",
);
const DURABLE_LSN: (&str, &str) = ("wconf_wal_durable_lsn", "Highest durable LSN.");

/// The WAL's metrics, built from one [`Wal::telemetry`] copy per scrape,
/// so counters and histograms agree with each other.
struct WalCollector {
    wal: Arc<Wal>,
    descs: Vec<Desc>,
}

impl WalCollector {
    fn new(wal: Arc<Wal>) -> WalCollector {
        let descs = [
            SYNC_SECONDS,
            SYNCS,
            RECORDS,
            BYTES,
            RECORDS_PER_SYNC,
            BYTES_PER_SYNC,
            LOG_BYTES,
            DURABLE_LSN,
        ]
        .iter()
        .map(|(name, help)| {
            Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
                .expect("WAL metric names are valid")
        })
        .collect();
        WalCollector { wal, descs }
    }
}

fn family((name, help): (&str, &str), kind: MetricType, metric: proto::Metric) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(vec![metric]);
    family
}

fn counter(desc: (&str, &str), value: u64) -> MetricFamily {
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    let mut metric = proto::Metric::default();
    metric.set_counter(counter);
    family(desc, MetricType::COUNTER, metric)
}

fn gauge(desc: (&str, &str), value: u64) -> MetricFamily {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value as f64);
    family(desc, MetricType::GAUGE, proto::Metric::from_gauge(gauge))
}

/// `counts` in its own unit divided by `per_unit` (µs to seconds: 1e6;
/// dividing, not multiplying by 1e-6, keeps `le="0.00002"` exact).
fn histogram(desc: (&str, &str), counts: &BucketCounts, per_unit: f64) -> MetricFamily {
    let buckets = counts
        .bounds
        .iter()
        .zip(&counts.cumulative)
        .map(|(&bound, &cumulative)| {
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(bound as f64 / per_unit);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut histogram = proto::Histogram::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(counts.count);
    histogram.set_sample_sum(counts.sum as f64 / per_unit);
    let mut metric = proto::Metric::default();
    metric.set_histogram(histogram);
    family(desc, MetricType::HISTOGRAM, metric)
}

impl Collector for WalCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let t = self.wal.telemetry();
        let (_, log_bytes) = crate::api::segment_usage(self.wal.dir());
        vec![
            histogram(SYNC_SECONDS, &t.sync_us_buckets, 1e6),
            counter(SYNCS, t.syncs),
            counter(RECORDS, t.records),
            counter(BYTES, t.bytes),
            histogram(RECORDS_PER_SYNC, &t.records_per_sync_buckets, 1.0),
            histogram(BYTES_PER_SYNC, &t.bytes_per_sync_buckets, 1.0),
            gauge(LOG_BYTES, log_bytes),
            gauge(DURABLE_LSN, self.wal.durable_lsn()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::storage::MemStorage;
    use crate::wal::WalOptions;

    /// Every metric name the load generator and dashboards rely on.
    const NAMES: &[(&str, &str)] = &[
        ("wconf_http_requests_total", "counter"),
        ("wconf_http_request_duration_seconds", "histogram"),
        ("wconf_wal_sync_seconds", "histogram"),
        ("wconf_wal_syncs_total", "counter"),
        ("wconf_wal_records_total", "counter"),
        ("wconf_wal_bytes_total", "counter"),
        ("wconf_wal_records_per_sync", "histogram"),
        ("wconf_wal_bytes_per_sync", "histogram"),
        ("wconf_wal_log_bytes", "gauge"),
        ("wconf_wal_durable_lsn", "gauge"),
        ("wconf_mailbox_depth", "gauge"),
        ("wconf_lock_waits_total", "counter"),
        ("wconf_lock_wait_seconds", "histogram"),
        ("wconf_locks_held", "gauge"),
        ("wconf_lock_waiters", "gauge"),
        ("wconf_sessions", "gauge"),
        ("wconf_sessions_expired_total", "counter"),
        ("wconf_snapshot_duration_seconds", "histogram"),
        ("wconf_snapshot_last_lsn", "gauge"),
        ("wconf_recovery_duration_seconds", "gauge"),
        ("wconf_recovery_records_replayed", "gauge"),
    ];

    fn watched() -> (Metrics, Arc<Wal>) {
        let storage = Arc::new(MemStorage::new());
        let dir = std::path::Path::new("/wal");
        let (wal, _) = Wal::open_with(storage, dir, WalOptions::default()).unwrap();
        let wal = Arc::new(wal);
        let metrics = Metrics::new();
        metrics.watch_wal(wal.clone());
        (metrics, wal)
    }

    #[test]
    fn the_registry_exposes_every_documented_name_with_its_type() {
        // Invariant: after one request, a scrape carries every name listed
        // in docs/api.md with the documented type, and nothing else
        // named wconf_*.
        let (metrics, wal) = watched();
        metrics.observe_request("/healthz", "GET", "200", Duration::from_micros(50));
        let text = metrics.render();
        for (name, kind) in NAMES {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} ({kind}) missing from:\n{text}"
            );
        }
        let exported = text
            .lines()
            .filter(|l| l.starts_with("# TYPE wconf_"))
            .count();
        assert_eq!(exported, NAMES.len(), "{text}");
        for actor in ["lock", "config", "wal"] {
            assert!(text.contains(&format!("wconf_mailbox_depth{{actor=\"{actor}\"}} 0\n")));
        }
        wal.close().unwrap();
    }

    #[test]
    fn wal_histograms_follow_the_telemetry_in_seconds() {
        // Invariant: the WAL families come from the telemetry at scrape
        // time: counters equal its totals, histogram buckets are its
        // cumulative counts with µs scaled to seconds, and +Inf equals the
        // number of syncs.
        let (metrics, wal) = watched();
        for i in 0..3u8 {
            wal.append(1, vec![i; 10]).unwrap().wait().unwrap();
        }
        let t = wal.telemetry();
        let text = metrics.render();
        assert!(text.contains(&format!("wconf_wal_records_total {}\n", t.records)));
        assert!(text.contains(&format!("wconf_wal_syncs_total {}\n", t.syncs)));
        assert!(
            text.contains("wconf_wal_sync_seconds_bucket{le=\"0.00002\"}"),
            "{text}"
        );
        assert!(text.contains("wconf_wal_sync_seconds_bucket{le=\"1\"}"));
        assert!(text.contains(&format!(
            "wconf_wal_sync_seconds_bucket{{le=\"+Inf\"}} {}\n",
            t.syncs
        )));
        assert!(text.contains("wconf_wal_durable_lsn 3\n"), "{text}");
        wal.close().unwrap();
    }

    #[test]
    fn two_servers_in_one_process_keep_their_own_counts() {
        // Invariant: each Metrics owns its registry, so one server's
        // requests never show in another's scrape.
        let (a, b) = (Metrics::new(), Metrics::new());
        a.observe_request("/healthz", "GET", "200", Duration::ZERO);
        assert!(a.render().contains("wconf_http_requests_total"));
        assert!(!b.render().contains("wconf_http_requests_total"));
    }
}
