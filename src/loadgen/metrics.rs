//! The daemon's own WAL figures, read from its `GET /metrics` (Prometheus
//! text format) before and after a run: records per fsync and fsync
//! latency over exactly the run, as differences of counters and buckets.

use serde::{Deserialize, Serialize};

/// Counter: `fdatasync` calls of the WAL writer.
pub const SYNCS: &str = "wconf_wal_syncs_total";
/// Counter: records made durable.
pub const RECORDS: &str = "wconf_wal_records_total";
/// Histogram (seconds): duration of each WAL sync.
pub const SYNC_SECONDS: &str = "wconf_wal_sync_seconds";

/// The figures of one scrape. Series with labels are summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub syncs: f64,
    pub records: f64,
    /// Cumulative buckets, `(upper bound in seconds, count)`, ascending, the
    /// last one `+Inf`.
    pub sync_buckets: Vec<(f64, f64)>,
    pub sync_sum_s: f64,
    pub sync_count: f64,
}

/// The metric names `text` lacks, so a renamed metric is reported rather
/// than read as zero.
pub fn missing(text: &str) -> Vec<&'static str> {
    let has = |name: &str| {
        text.lines()
            .any(|l| !l.starts_with('#') && l.starts_with(name))
    };
    [SYNCS, RECORDS, SYNC_SECONDS]
        .into_iter()
        .filter(|n| !has(n))
        .collect()
}

/// Parses the three metrics out of a Prometheus text exposition. Lines it
/// does not know are skipped; a known line whose value does not parse is an
/// error.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut s = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let known = [SYNCS, RECORDS].contains(&name)
            || name
                .strip_prefix(SYNC_SECONDS)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest));
        if !known {
            continue;
        }
        let v = parse_value(value).ok_or_else(|| format!("bad value in {line:?}"))?;
        match name {
            SYNCS => s.syncs += v,
            RECORDS => s.records += v,
            _ if name.ends_with("_sum") => s.sync_sum_s += v,
            _ if name.ends_with("_count") => s.sync_count += v,
            _ => {
                let le = label(labels, "le")
                    .and_then(parse_value)
                    .ok_or_else(|| format!("bucket without a valid le in {line:?}"))?;
                match s.sync_buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += v,
                    None => s.sync_buckets.push((le, v)),
                }
            }
        }
    }
    s.sync_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(s)
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// The value of label `key` in `a="x",le="0.1"`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// What the daemon did during the run: differences of two scrapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalDelta {
    pub syncs: u64,
    pub records: u64,
    /// Records made durable per fdatasync: the group-commit batch size.
    pub records_per_sync: Option<f64>,
    /// Quantiles interpolated inside the histogram's buckets, as
    /// Prometheus' `histogram_quantile` does; only as fine as the buckets.
    pub sync_p50_us: Option<f64>,
    pub sync_p99_us: Option<f64>,
    pub sync_mean_us: Option<f64>,
}

impl WalDelta {
    pub fn between(before: &Scrape, after: &Scrape) -> WalDelta {
        let syncs = (after.syncs - before.syncs).max(0.0);
        let records = (after.records - before.records).max(0.0);
        let buckets: Vec<(f64, f64)> = after
            .sync_buckets
            .iter()
            .map(|&(le, c)| {
                let was = before
                    .sync_buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, (c - was).max(0.0))
            })
            .collect();
        let count = after.sync_count - before.sync_count;
        let sum = after.sync_sum_s - before.sync_sum_s;
        WalDelta {
            syncs: syncs as u64,
            records: records as u64,
            records_per_sync: (syncs > 0.0).then(|| records / syncs),
            sync_p50_us: quantile(&buckets, 0.5).map(|s| s * 1e6),
            sync_p99_us: quantile(&buckets, 0.99).map(|s| s * 1e6),
            sync_mean_us: (count > 0.0).then(|| sum / count * 1e6),
        }
    }
}

/// The `q` quantile of cumulative `buckets`, linearly interpolated within
/// the bucket it falls in (the first bucket starts at 0). A quantile in the
/// `+Inf` bucket answers the highest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP wconf_wal_syncs_total fdatasync calls
# TYPE wconf_wal_syncs_total counter
wconf_wal_syncs_total 10
wconf_wal_records_total 400
wconf_wal_sync_seconds_bucket{le=\"0.0001\"} 4
wconf_wal_sync_seconds_bucket{le=\"0.0002\"} 9
wconf_wal_sync_seconds_bucket{le=\"+Inf\"} 10
wconf_wal_sync_seconds_sum 0.0015
wconf_wal_sync_seconds_count 10
wconf_other_total 3
";

    #[test]
    fn parses_the_three_metrics_and_skips_the_rest() {
        // Invariant: counters, buckets (sorted, +Inf last), sum and count
        // are read; other metrics and comments are ignored.
        let s = parse(TEXT).unwrap();
        assert_eq!(s.syncs, 10.0);
        assert_eq!(s.records, 400.0);
        assert_eq!(
            s.sync_buckets,
            vec![(0.0001, 4.0), (0.0002, 9.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!(s.sync_count, 10.0);
        assert!(missing(TEXT).is_empty());
        assert_eq!(
            missing("wconf_wal_syncs_total 1\n"),
            vec![RECORDS, SYNC_SECONDS]
        );
    }

    #[test]
    fn the_delta_covers_only_what_happened_between_scrapes() {
        // Invariant: the delta's figures come from differences, so history
        // before the first scrape does not count.
        let before = parse(TEXT).unwrap();
        let after = parse(
            &TEXT
                .replace("total 10", "total 20")
                .replace("total 400", "total 1400")
                .replace("\"0.0002\"} 9", "\"0.0002\"} 19")
                .replace("\"+Inf\"} 10", "\"+Inf\"} 20")
                .replace("sum 0.0015", "sum 0.003")
                .replace("count 10", "count 20"),
        )
        .unwrap();
        let d = WalDelta::between(&before, &after);
        assert_eq!((d.syncs, d.records), (10, 1000));
        assert_eq!(d.records_per_sync, Some(100.0));
        // All ten new syncs fell in (100 µs, 200 µs]: the median is halfway.
        assert!((d.sync_p50_us.unwrap() - 150.0).abs() < 1e-6, "{d:?}");
        assert!((d.sync_mean_us.unwrap() - 150.0).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_answers_the_top_bound() {
        // Invariant: no infinite or NaN latency is ever reported.
        let b = [(0.001, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.99), Some(0.001));
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }
}
