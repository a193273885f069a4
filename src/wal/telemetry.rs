//! Group-commit telemetry: sync latency, records and bytes per sync.

use hdrhistogram::Histogram;

/// Histograms the writer updates after every sync.
pub(crate) struct Telemetry {
    sync_us: Histogram<u64>,
    records_per_sync: Histogram<u64>,
    bytes_per_sync: Histogram<u64>,
    last_sync_us: u64,
    records: u64,
    bytes: u64,
    // Exact counts over fixed bounds, which the daemon exports as
    // Prometheus histograms at scrape time. The HDR histograms above
    // quantise values near a bound, so they cannot say exactly how many
    // syncs took at most 1 ms; these can.
    sync_us_buckets: Counts,
    records_buckets: Counts,
    bytes_buckets: Counts,
}

/// Upper bounds (inclusive) of the sync latency buckets, in µs: 20 µs (a
/// fast NVMe flush) to 1 s (a disk in trouble).
pub const SYNC_US_BOUNDS: &[u64] = &[
    20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];
/// Upper bounds of the records-per-sync buckets: 1 (no batching) to 64 Ki.
pub const RECORDS_PER_SYNC_BOUNDS: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096, 16_384, 65_536,
];
/// Upper bounds of the bytes-per-sync buckets: one small frame to 64 MiB.
pub const BYTES_PER_SYNC_BOUNDS: &[u64] = &[
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// Counts of values at or below each bound, cumulative like a Prometheus
/// histogram's buckets; values above the last bound count only in `count`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketCounts {
    /// Inclusive upper bounds, ascending.
    pub bounds: &'static [u64],
    /// `cumulative[i]`: values `<= bounds[i]`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    /// The exact sum of every value counted.
    pub sum: u64,
}

/// Per-bucket (not cumulative) counts over fixed bounds: one compare per
/// bound and an add per value, so the writer pays nothing it would notice.
struct Counts {
    bounds: &'static [u64],
    counts: Vec<u64>,
    count: u64,
    sum: u64,
}

impl Counts {
    fn new(bounds: &'static [u64]) -> Counts {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Counts {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0,
        }
    }

    fn record(&mut self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
    }

    fn snapshot(&self) -> BucketCounts {
        let cumulative = self
            .counts
            .iter()
            .scan(0, |total, c| {
                *total += c;
                Some(*total)
            })
            .collect();
        BucketCounts {
            bounds: self.bounds,
            cumulative,
            count: self.count,
            sum: self.sum,
        }
    }
}

/// A copy of the telemetry at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySnapshot {
    pub syncs: u64,
    pub records: u64,
    pub bytes: u64,
    pub last_sync_us: u64,
    pub sync_us_p50: u64,
    pub sync_us_p99: u64,
    pub sync_us_max: u64,
    pub records_per_sync_mean: f64,
    pub records_per_sync_p50: u64,
    pub records_per_sync_max: u64,
    pub bytes_per_sync_mean: f64,
    /// Sync latency in µs, records and bytes per sync, over the fixed
    /// bounds above.
    pub sync_us_buckets: BucketCounts,
    pub records_per_sync_buckets: BucketCounts,
    pub bytes_per_sync_buckets: BucketCounts,
}

/// A minute: a sync slower than that is a failing disk, and clamps.
const SYNC_US_HIGH: u64 = 60_000_000;
/// Frames are at least 24 bytes, so a 1 GiB batch holds fewer than this.
const RECORDS_PER_SYNC_HIGH: u64 = 1 << 26;
const _: () = assert!(
    (super::BATCH_BYTES_LIMIT / super::format::FRAME_HEADER_LEN) as u64 <= RECORDS_PER_SYNC_HIGH
);

fn histogram(high: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high, 3).expect("static histogram bounds are valid")
}

impl Telemetry {
    pub(crate) fn new() -> Telemetry {
        Telemetry {
            // Ranges cover what one batch can be (a batch is at most
            // BATCH_BYTES_LIMIT bytes); larger values clamp. They are kept
            // tight because every open allocates these.
            sync_us: histogram(SYNC_US_HIGH),
            records_per_sync: histogram(RECORDS_PER_SYNC_HIGH),
            bytes_per_sync: histogram(super::BATCH_BYTES_LIMIT as u64),
            last_sync_us: 0,
            records: 0,
            bytes: 0,
            sync_us_buckets: Counts::new(SYNC_US_BOUNDS),
            records_buckets: Counts::new(RECORDS_PER_SYNC_BOUNDS),
            bytes_buckets: Counts::new(BYTES_PER_SYNC_BOUNDS),
        }
    }

    pub(crate) fn record_sync(&mut self, sync_us: u64, records: u64, bytes: u64) {
        // `saturating_record` clamps values outside the bounds instead of failing.
        self.sync_us.saturating_record(sync_us.max(1));
        self.records_per_sync.saturating_record(records.max(1));
        self.bytes_per_sync.saturating_record(bytes.max(1));
        self.last_sync_us = sync_us;
        self.records += records;
        self.bytes += bytes;
        self.sync_us_buckets.record(sync_us);
        self.records_buckets.record(records);
        self.bytes_buckets.record(bytes);
    }

    pub(crate) fn snapshot(&self) -> TelemetrySnapshot {
        let syncs = self.sync_us.len();
        let mean = |total: u64| {
            if syncs == 0 {
                0.0
            } else {
                total as f64 / syncs as f64
            }
        };
        TelemetrySnapshot {
            syncs,
            records: self.records,
            bytes: self.bytes,
            last_sync_us: self.last_sync_us,
            sync_us_p50: self.sync_us.value_at_quantile(0.5),
            sync_us_p99: self.sync_us.value_at_quantile(0.99),
            sync_us_max: self.sync_us.max(),
            records_per_sync_mean: mean(self.records),
            records_per_sync_p50: self.records_per_sync.value_at_quantile(0.5),
            records_per_sync_max: self.records_per_sync.max(),
            bytes_per_sync_mean: mean(self.bytes),
            sync_us_buckets: self.sync_us_buckets.snapshot(),
            records_per_sync_buckets: self.records_buckets.snapshot(),
            bytes_per_sync_buckets: self.bytes_buckets.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_counts_are_exact_at_the_bounds_and_cumulative() {
        // Invariant: a value equal to a bound counts in that bound's bucket
        // (Prometheus `le`), buckets are cumulative, values past the last
        // bound count only in `count`, and `sum` is exact.
        let mut t = Telemetry::new();
        for sync_us in [19, 20, 21, 1_000, 1_000_000, 1_000_001] {
            t.record_sync(sync_us, 1, 64);
        }
        let b = t.snapshot().sync_us_buckets;
        assert_eq!(b.bounds, SYNC_US_BOUNDS);
        let le = |bound: u64| b.cumulative[b.bounds.iter().position(|&x| x == bound).unwrap()];
        assert_eq!(le(20), 2);
        assert_eq!(le(50), 3);
        assert_eq!(le(1_000), 4);
        assert_eq!(le(1_000_000), 5);
        assert_eq!(b.count, 6);
        assert_eq!(b.sum, 19 + 20 + 21 + 1_000 + 1_000_000 + 1_000_001);
        let r = t.snapshot().records_per_sync_buckets;
        assert_eq!((r.cumulative[0], r.count, r.sum), (6, 6, 6));
        let bytes = t.snapshot().bytes_per_sync_buckets;
        assert_eq!((bytes.cumulative[0], bytes.sum), (6, 6 * 64));
    }
}
