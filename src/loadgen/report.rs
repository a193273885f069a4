//! The result of one run: what was asked, what was measured, and how it
//! renders as text. The JSON form (serde) is what `wconf-bench plot` reads
//! back, so its field names are the file format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::cpu::CpuSplit;
use super::metrics::WalDelta;
use super::workload::{Params, Workload};

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Operations of one kind in the measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    pub ops: u64,
    pub per_s: f64,
    pub latency_us: Latency,
}

/// Failed requests over the whole run (warm-up included), by kind, and the
/// first few messages to say why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub samples: Vec<String>,
}

/// The daemon's own figures over the measured window, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonFigures {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_because: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalDelta>,
}

/// The snapshots a run asked for while it measured (`--snapshot-every`),
/// so its latency can be compared with a run without them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFigures {
    /// Answered with success inside the measured window.
    pub taken: u64,
    pub failed: u64,
    /// Size of the last one written.
    pub bytes: u64,
    /// From hand-over to durable, the longest.
    pub duration_ms_max: u64,
    /// The lock actor's stop for the hand-over, the longest.
    pub stall_us_max: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub workload: Workload,
    pub addr: String,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Open loop at this many operations per second in all; None: closed loop.
    pub rate: Option<f64>,
    #[serde(flatten)]
    pub params: Params,
    pub seed: u64,
    pub started_unix_s: u64,
    /// What one operation is: changes, jobs, cycles or requests.
    pub unit: String,
    /// Operations completed inside the measured window.
    pub ops: u64,
    /// `ops` per second of the window.
    pub throughput: f64,
    /// Of all operations; in open loop, from each one's scheduled start.
    pub latency_us: Latency,
    pub by_kind: BTreeMap<String, KindReport>,
    /// Completed during the warm-up, and after the window closed.
    pub warmup_ops: u64,
    pub late_ops: u64,
    /// Open loop: operations scheduled before the window closed that were
    /// never sent, because the daemon (or this generator) fell behind. A
    /// rate the system sustains leaves this at 0.
    pub unsent_ops: u64,
    /// Config changes acknowledged over the whole run; with no errors it
    /// equals the serial's growth.
    pub changes_acked: u64,
    pub config_serial_before: u64,
    pub config_serial_after: u64,
    pub errors: Errors,
    /// Connects (TCP or Unix socket): one per connection unless errors
    /// forced reconnects.
    pub connects: u64,
    pub daemon: DaemonFigures,
    /// Over the measured window.
    pub cpu: CpuSplit,
    /// Bytes of `/pad` added before the run (`--pad-config-mb`).
    #[serde(default)]
    pub pad_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotFigures>,
}

/// `12345.6` as `12,346`.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in microseconds, in the unit that reads best.
pub fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn latency_line(l: &Latency) -> String {
    format!(
        "p50 {}  p99 {}  p999 {}  max {}",
        micros(l.p50 as f64),
        micros(l.p99 as f64),
        micros(l.p999 as f64),
        micros(l.max as f64)
    )
}

fn cores(v: Option<f64>) -> String {
    v.map_or("?".into(), |c| format!("{c:.2}"))
}

impl Report {
    /// The human-readable form.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {} ops/s", thousands(r)),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            t,
            "wconf-bench {} against {}: {} connections, {mode}, {:.1} s measured after {:.1} s warm-up",
            self.workload.name(),
            self.addr,
            self.connections,
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            t,
            "throughput  {} {}/s ({} in the window)",
            thousands(self.throughput),
            self.unit,
            thousands(self.ops as f64)
        );
        let _ = writeln!(t, "latency     {}", latency_line(&self.latency_us));
        if self.pad_bytes > 0 {
            let _ = writeln!(
                t,
                "config      {:.1} MB of padding under /pad",
                self.pad_bytes as f64 / 1e6
            );
        }
        if let Some(s) = &self.snapshots {
            let _ = writeln!(
                t,
                "snapshots   {} written while measuring ({} failed), {:.1} MB each, \
                 longest {} ms to durable, hand-over stall at most {}",
                s.taken,
                s.failed,
                s.bytes as f64 / 1e6,
                s.duration_ms_max,
                micros(s.stall_us_max as f64)
            );
        }
        if self.rate.is_some() {
            let _ = writeln!(
                t,
                "schedule    {} operations fell so far behind that they were never sent",
                thousands(self.unsent_ops as f64)
            );
        }
        if self.by_kind.len() > 1 {
            for (kind, k) in &self.by_kind {
                let _ = writeln!(
                    t,
                    "  {kind:<9} {}/s  {}",
                    thousands(k.per_s),
                    latency_line(&k.latency_us)
                );
            }
        }
        let e = &self.errors;
        let kinds: Vec<String> = e.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            t,
            "errors      {} (whole run: {})",
            e.total,
            kinds.join(", ")
        );
        for s in &e.samples {
            let _ = writeln!(t, "  {s}");
        }
        let _ = writeln!(
            t,
            "changes     {} acknowledged; config serial {} -> {}; {} connects",
            thousands(self.changes_acked as f64),
            self.config_serial_before,
            self.config_serial_after,
            self.connects
        );
        match (&self.daemon.wal, &self.daemon.unavailable_because) {
            (Some(w), _) => {
                let opt = |v: Option<f64>| v.map_or("-".into(), micros);
                let _ = writeln!(
                    t,
                    "daemon      {:.1} records/fsync ({} records, {} fsyncs); fsync p50 {} p99 {} mean {}",
                    w.records_per_sync.unwrap_or(0.0),
                    thousands(w.records as f64),
                    thousands(w.syncs as f64),
                    opt(w.sync_p50_us),
                    opt(w.sync_p99_us),
                    opt(w.sync_mean_us)
                );
            }
            (None, why) => {
                let _ = writeln!(
                    t,
                    "daemon metrics: unavailable{}",
                    why.as_deref().map_or(String::new(), |w| format!(" ({w})"))
                );
            }
        }
        let c = &self.cpu;
        let per_op =
            |us: Option<f64>| us.map_or(String::new(), |u| format!(" ({} per op)", micros(u)));
        let _ = writeln!(
            t,
            "cpu         wconf-bench {} cores{}, wconfd {} cores{}{}, others {} cores; of {} over {:.1} s",
            cores(c.bench_cores),
            per_op(c.bench_us_per_op),
            cores(c.daemon_cores),
            per_op(c.daemon_us_per_op),
            c.daemon_pid.map_or(" (pid not found)".into(), |p| format!(" (pid {p})")),
            cores(c.other_cores),
            c.cores,
            c.wall_s
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        // Invariant: thousands separators and units as the table shows them.
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(micros(150.0), "150 µs");
        assert_eq!(micros(1500.0), "1.50 ms");
        assert_eq!(micros(25_000.0), "25.0 ms");
    }
}
