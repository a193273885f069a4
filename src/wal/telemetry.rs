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
}

/// A copy of the telemetry at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
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
        }
    }
}
