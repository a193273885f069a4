//! Per-change cost of a config document at 10 KB, 1 MB and 10 MB (issue 7,
//! item 2): wconf's delta records against WConfD's rewrite of the whole
//! file. One change sets one key of a map of 100-byte values.
//!
//! - `config_change/wconf/<size>`: parse the one-op patch, apply it to the
//!   `ConfigState` while the previous version is still held (as the config
//!   actor holds it, so the change must copy its path), encode the
//!   `ConfigWrite` record, append it to a real WAL and wait for its fsync.
//! - `config_change/naive/<size>`: apply the same patch to a
//!   `serde_json::Value`, serialise the whole config, write it to a temp
//!   file, fsync, rename over the config, fsync the directory.
//! - `config_apply/{wconf,naive}/<size>`: the in-memory part alone (no
//!   I/O), where the sizes differ most sharply.
//! - `config_get/wconf/<size>`: finding one key's value by its JSON
//!   pointer, what `GET /v1/config/<path>` does before encoding the value.
//!
//! Target: wconf's 10 MB change within 1.2x of its 10 KB change; the naive
//! one grows with the document (about 1000x from 10 KB to 10 MB).
//!
//! Before the benchmarks, one `wconf-bench config_memory/<size>` line per
//! size reports the process's resident memory grown by building the
//! document (as a daemon does, through ≤ 4 MiB patches) against its JSON
//! length, for issue 7's memory target (RSS < 3x JSON + 64 MiB).

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use serde_json::{json, Value};
use wconf::replay::encode_record;
use wconf::state::config::parse_patch;
use wconf::state::{ConfigState, Record};
use wconf::wal::{Wal, WalOptions};

/// Document sizes (compact JSON bytes, approximately) and their labels.
const SIZES: [(usize, &str); 3] = [(10_000, "10KB"), (1_000_000, "1MB"), (10_000_000, "10MB")];
const VALUE_BYTES: usize = 100;
/// Keys per building patch: well under PATCH_BYTES_MAX (4 MiB).
const KEYS_PER_BUILD_PATCH: usize = 10_000;

fn key(i: usize) -> String {
    format!("k{i:07}")
}

fn value(i: usize) -> String {
    let tag = format!("{i:07}-");
    format!("{tag}{}", "v".repeat(VALUE_BYTES - tag.len()))
}

/// Keys that make a `{"keys": {...}}` document of about `bytes`:
/// `"k0000000":"<100 bytes>",` is 114 bytes.
fn key_count(bytes: usize) -> usize {
    (bytes / (key(0).len() + VALUE_BYTES + 6)).max(1)
}

/// The document built the daemon's way: a patch per
/// `KEYS_PER_BUILD_PATCH` keys.
fn build_config(keys: usize) -> ConfigState {
    let mut config = ConfigState::default();
    let mut lsn = 1;
    config
        .apply_patch(
            lsn,
            &patch(json!([{"op": "add", "path": "/keys", "value": {}}])),
        )
        .expect("create /keys");
    for start in (0..keys).step_by(KEYS_PER_BUILD_PATCH) {
        let ops: Vec<Value> = (start..keys.min(start + KEYS_PER_BUILD_PATCH))
            .map(|i| json!({"op": "add", "path": format!("/keys/{}", key(i)), "value": value(i)}))
            .collect();
        lsn += 1;
        config
            .apply_patch(lsn, &patch(Value::Array(ops)))
            .expect("add keys");
    }
    config
}

fn patch(ops: Value) -> json_patch::Patch {
    serde_json::from_value(ops).expect("a well-formed patch")
}

/// The text of the one-key change number `n`.
fn change_text(keys: usize, n: usize) -> String {
    let i = (n * 7_919) % keys;
    json!([{"op": "replace", "path": format!("/keys/{}", key(i)), "value": value(n)}]).to_string()
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

fn memory(_c: &mut Criterion) {
    // 100 MB too when measuring: issue 5's and 7's targets use it.
    let mut sizes: Vec<(usize, &str)> = SIZES.to_vec();
    if common::measuring() {
        sizes.push((100_000_000, "100MB"));
    }
    // All kept until the end, so no build reuses memory an earlier one
    // freed and looks smaller than it is.
    let mut built = Vec::new();
    for (bytes, label) in sizes {
        let before = rss_bytes();
        let config = build_config(key_count(bytes));
        let after = rss_bytes();
        let json_bytes = config.doc_bytes();
        let grown = after.saturating_sub(before);
        common::report(
            &format!("config_memory/{label}"),
            &[
                ("json_bytes", &json_bytes),
                ("rss_grown_bytes", &grown),
                (
                    "rss_per_json_byte",
                    &format_args!("{:.2}", grown as f64 / json_bytes as f64),
                ),
            ],
        );
        built.push(config);
    }
}

/// A fresh log under the bench directory.
fn fresh_log(root: &Path) -> (Wal, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("config-change-")
        .tempdir_in(root)
        .expect("create a temporary log directory");
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open a fresh WAL");
    (wal, dir)
}

/// WConfD's write: the whole document to a temp file, fsync, rename, then
/// fsync the directory so the rename is durable.
fn write_whole(dir: &Path, target: &Path, doc: &Value) {
    let tmp: PathBuf = dir.join("config.json.tmp");
    let text = serde_json::to_vec(doc).expect("serialise the config");
    let mut f = File::create(&tmp).expect("create the temp file");
    f.write_all(&text).expect("write the config");
    f.sync_all().expect("fsync the config");
    drop(f);
    std::fs::rename(&tmp, target).expect("rename over the config");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
}

fn change(c: &mut Criterion) {
    let root = common::bench_dir();
    let mut group = c.benchmark_group("config_change");
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    for (bytes, label) in SIZES {
        let keys = key_count(bytes);
        let mut config = None;
        let mut log = None;
        group.bench_function(format!("wconf/{label}"), |b| {
            let config = config.get_or_insert_with(|| build_config(keys));
            let (wal, _) = log.get_or_insert_with(|| fresh_log(&root));
            let mut n = 0;
            b.iter(|| {
                n += 1;
                let text = change_text(keys, n);
                let p = parse_patch(&text).expect("parse the change");
                // The config actor's copy: the change must not write into it.
                let published = config.clone();
                config
                    .apply_patch(config.lsn() + 1, &p)
                    .expect("apply the change");
                let record = Record::ConfigWrite {
                    session: None,
                    patch_json: text,
                    release_config: false,
                    request_id: None,
                };
                let (kind, payload) = encode_record(&record).expect("encode the record");
                wal.append(kind, payload)
                    .expect("append")
                    .wait()
                    .expect("record durable");
                drop(published);
            });
        });
        if let Some((wal, _dir)) = log {
            wal.close().expect("close the WAL");
        }
        drop(config);

        let mut naive = None;
        group.bench_function(format!("naive/{label}"), |b| {
            let (doc, dir) = naive.get_or_insert_with(|| {
                let doc = build_config(keys).doc().to_value();
                let dir = tempfile::Builder::new()
                    .prefix("config-naive-")
                    .tempdir_in(&root)
                    .expect("create a temporary directory");
                (doc, dir)
            });
            let target = dir.path().join("config.json");
            let mut n = 0;
            b.iter(|| {
                n += 1;
                let p = parse_patch(&change_text(keys, n)).expect("parse the change");
                json_patch::patch(doc, &p).expect("apply the change");
                write_whole(dir.path(), &target, doc);
            });
        });
    }
    group.finish();
}

fn apply_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_apply");
    for (bytes, label) in SIZES {
        let keys = key_count(bytes);
        let mut config = build_config(keys);
        let mut n = 0;
        group.bench_function(format!("wconf/{label}"), |b| {
            b.iter(|| {
                n += 1;
                let p = parse_patch(&change_text(keys, n)).expect("parse the change");
                let published = config.clone();
                config
                    .apply_patch(config.lsn() + 1, &p)
                    .expect("apply the change");
                drop(published);
            });
        });
        let mut doc = config.doc().to_value();
        drop(config);
        group.bench_function(format!("naive/{label}"), |b| {
            b.iter(|| {
                n += 1;
                let p = parse_patch(&change_text(keys, n)).expect("parse the change");
                json_patch::patch(&mut doc, &p).expect("apply the change");
                serde_json::to_vec(&doc).expect("serialise the config")
            });
        });
    }
    group.finish();
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_get");
    for (bytes, label) in SIZES {
        let keys = key_count(bytes);
        let config = build_config(keys);
        let pointers: Vec<String> = (0..keys).map(|i| format!("/keys/{}", key(i))).collect();
        let mut n = 0;
        group.bench_function(format!("wconf/{label}"), |b| {
            b.iter(|| {
                n += 7_919;
                config
                    .get(&pointers[n % keys])
                    .expect("the key is there")
                    .encoded_len()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, memory, change, apply_only, get);
criterion_main!(benches);
