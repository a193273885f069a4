//! `wal-dump stats`: where the log's bytes and records go.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use wconf::state::Record;
use wconf::wal::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};

use crate::decode::{decode, type_name};
use crate::log::{Fatal, Log};
use crate::progress::Progress;
use crate::{exit, Format};

pub const SCHEMA: &str = "wal-dump/stats/v1";

/// Everything `stats` counts, in one pass.
#[derive(Default)]
struct Counts {
    records: u64,
    /// Per kind: records and frame bytes (padding included).
    by_kind: BTreeMap<u16, (u64, u64)>,
    payload_bytes: u64,
    padding_bytes: u64,
    /// Sizes of complete group-commit batches, in records.
    batches: Vec<u64>,
    open_batch: u64,
    sessions: HashMap<String, u64>,
    locks: HashMap<String, u64>,
    /// `(lsn, started_unix_ms)` of every epoch record.
    epochs: Vec<(u64, u64)>,
    first_lsn: Option<u64>,
    last_lsn: Option<u64>,
}

pub fn run(log: &Log, top: usize, format: Format, progress: &Progress) -> Result<u8, Fatal> {
    let mut c = Counts::default();
    progress.next_pass("counting", log.frame_bytes());
    let mut counter = progress.counter();
    for located in log.records() {
        let r = located?.record;
        counter.add(r.header.padded_len() as u64);
        c.records += 1;
        c.first_lsn.get_or_insert(r.lsn);
        c.last_lsn = Some(r.lsn);
        let padded = r.header.padded_len() as u64;
        let e = c.by_kind.entry(r.kind).or_default();
        e.0 += 1;
        e.1 += padded;
        c.payload_bytes += r.payload.len() as u64;
        c.padding_bytes += padded - u64::from(r.header.frame_len);
        c.open_batch += 1;
        if r.header.is_batch_end() {
            c.batches.push(c.open_batch);
            c.open_batch = 0;
        }
        let d = decode(r.lsn, r.kind, r.payload);
        if let Some(s) = d.session() {
            *c.sessions.entry(s).or_default() += 1;
        }
        for l in d.locks() {
            *c.locks.entry(l.to_string()).or_default() += 1;
        }
        if let Some(Record::Epoch {
            started_unix_ms, ..
        }) = d.record()
        {
            c.epochs.push((r.lsn, *started_unix_ms));
        }
    }
    drop(counter);
    progress.clear();
    let doc = to_json(log, &c, top);
    match format {
        Format::Text => print_text(&doc),
        Format::Json | Format::Ndjson => {
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"))
        }
    }
    if let Some(stop) = &log.stop {
        eprintln!("wal-dump: {}", stop.describe());
        return Ok(stop.exit_code());
    }
    Ok(exit::CLEAN)
}

fn top_n(map: &HashMap<String, u64>, n: usize) -> Vec<Value> {
    let mut v: Vec<(&String, &u64)> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.into_iter()
        .take(n)
        .map(|(k, n)| json!({"name": k, "records": n}))
        .collect()
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn to_json(log: &Log, c: &Counts, top: usize) -> Value {
    let frame_bytes: u64 = c.by_kind.values().map(|v| v.1).sum();
    let types: Vec<Value> = c
        .by_kind
        .iter()
        .map(|(k, (n, bytes))| {
            json!({
                "kind": k,
                "type": type_name(*k),
                "records": n,
                "bytes": bytes,
                "share": ratio(*bytes, frame_bytes),
            })
        })
        .collect();
    let segments: Vec<Value> = log
        .segments
        .iter()
        .zip(&log.scans)
        .map(|(f, s)| {
            json!({
                "segment": crate::log::file_name(f),
                "records": s.records,
                "written_bytes": s.end,
                "capacity_bytes": f.view.len(),
                "fill": ratio(s.end, f.view.len() as u64),
            })
        })
        .collect();
    let written: u64 = log.scans.iter().map(|s| s.end).sum();
    let capacity: u64 = log
        .segments
        .iter()
        .take(log.scans.len())
        .map(|f| f.view.len() as u64)
        .sum();
    let mut sizes = c.batches.clone();
    sizes.sort_unstable();
    let batches = json!({
        "count": sizes.len(),
        "mean": ratio(sizes.iter().sum(), sizes.len() as u64),
        "p50": sizes.get(sizes.len().saturating_sub(1) / 2),
        "max": sizes.last(),
    });
    // The only clock in the log is each Epoch record's start time, so the
    // rate covers the records from the first daemon start to the last one.
    let rate = match (c.epochs.first(), c.epochs.last()) {
        (Some(&(lsn0, ms0)), Some(&(lsn1, ms1))) if ms1 > ms0 => json!({
            "records": lsn1 - lsn0,
            "seconds": (ms1 - ms0) as f64 / 1000.0,
            "records_per_second": (lsn1 - lsn0) as f64 * 1000.0 / (ms1 - ms0) as f64,
            "clock": "epoch records' started_unix_ms: first to last daemon start",
        }),
        _ => json!({
            "records": null,
            "seconds": null,
            "records_per_second": null,
            "clock": "needs two epoch records with different start times (the only clock in the log)",
        }),
    };
    json!({
        "schema": SCHEMA,
        "records": c.records,
        "first_lsn": c.first_lsn,
        "last_lsn": c.last_lsn,
        "types": types,
        "bytes": {
            "frames": frame_bytes,
            "payload": c.payload_bytes,
            "frame_headers": c.records * FRAME_HEADER_LEN as u64,
            "padding": c.padding_bytes,
            "padding_share": ratio(c.padding_bytes, frame_bytes),
            "segment_headers": log.scans.len() as u64 * SEGMENT_HEADER_LEN as u64,
            "written": written,
            "capacity": capacity,
            "fill": ratio(written, capacity),
        },
        "segments": segments,
        "batches": batches,
        "top_sessions": top_n(&c.sessions, top),
        "top_locks": top_n(&c.locks, top),
        "rate": rate,
        "epochs": c.epochs.len(),
    })
}

fn print_text(d: &Value) {
    let n = |v: &Value| v.to_string();
    let pct = |v: &Value| match v.as_f64().unwrap_or(0.0) {
        // A few records in a 64 MiB segment: say "some", not "0.0%".
        x if x > 0.0 && x < 0.0005 => "<0.1%".to_string(),
        x => format!("{:.1}%", x * 100.0),
    };
    println!(
        "records {}  LSN {}..{}  epochs {}",
        d["records"], d["first_lsn"], d["last_lsn"], d["epochs"]
    );
    println!(
        "\n{:<16} {:>10} {:>12} {:>7}",
        "type", "records", "bytes", "share"
    );
    for t in d["types"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:>10} {:>12} {:>7}",
            t["type"].as_str().unwrap_or(""),
            n(&t["records"]),
            n(&t["bytes"]),
            pct(&t["share"])
        );
    }
    let b = &d["bytes"];
    println!(
        "\nbytes: frames {} = payload {} + frame headers {} + padding {} ({} of frames)",
        b["frames"],
        b["payload"],
        b["frame_headers"],
        b["padding"],
        pct(&b["padding_share"])
    );
    println!(
        "segments: {} written of {} preallocated ({} fill), segment headers {}",
        b["written"],
        b["capacity"],
        pct(&b["fill"]),
        b["segment_headers"]
    );
    for s in d["segments"].as_array().into_iter().flatten() {
        println!(
            "  {}  {} records  {} of {} bytes ({})",
            s["segment"].as_str().unwrap_or(""),
            s["records"],
            s["written_bytes"],
            s["capacity_bytes"],
            pct(&s["fill"])
        );
    }
    let bt = &d["batches"];
    println!(
        "\nbatches: {} (records per batch: mean {:.2}, p50 {}, max {})",
        bt["count"],
        bt["mean"].as_f64().unwrap_or(0.0),
        bt["p50"],
        bt["max"]
    );
    for (title, key) in [("sessions", "top_sessions"), ("locks", "top_locks")] {
        println!("\ntop {title}:");
        for s in d[key].as_array().into_iter().flatten() {
            println!(
                "  {:>8}  {}",
                n(&s["records"]),
                s["name"].as_str().unwrap_or("")
            );
        }
    }
    let r = &d["rate"];
    match r["records_per_second"].as_f64() {
        Some(rps) => println!(
            "\nrate: {rps:.2} records/s ({} records in {} s; clock: {})",
            r["records"],
            r["seconds"],
            r["clock"].as_str().unwrap_or("")
        ),
        None => println!("\nrate: unknown ({})", r["clock"].as_str().unwrap_or("")),
    }
}
