#!/usr/bin/env bash
# Runs the WAL benchmarks (benches/wal_append.rs, benches/wal_replay.rs) and
# prints a markdown table of criterion's medians with records/s, MB/s of log
# bytes and records per fsync, headed by the machine's core count.
#
# Usage: benches/run-wal-benches.sh [extra criterion arguments, e.g. a filter]
# Environment:
#   WCONF_BENCH_WARM_UP_S     criterion --warm-up-time, seconds (default 3)
#   WCONF_BENCH_MEASURE_S     criterion --measurement-time, seconds (default 10)
#   WCONF_BENCH_REPLAY_BYTES  size of the replay log (default 1000000000);
#                             built once, cached under target/tmp/wconf-bench
#   WCONF_BENCH_DIR           where logs are written (default target/tmp/wconf-bench);
#                             must be on the disk to measure, not tmpfs
#
# The table is built from the `wconf-bench` lines this run printed, so it
# shows only benchmarks that ran now, with the medians they just wrote to
# target/criterion/**/new/. The full output is kept in target/wconf-bench-run.log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
warm_up_s=${WCONF_BENCH_WARM_UP_S:-3}
measure_s=${WCONF_BENCH_MEASURE_S:-10}
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
log="$target_dir/wconf-bench-run.log"
: >"$log"

for bench in wal_append wal_replay; do
    cargo bench --bench "$bench" -- \
        --warm-up-time "$warm_up_s" --measurement-time "$measure_s" "$@" 2>&1 | tee -a "$log"
done

bench_dir=${WCONF_BENCH_DIR:-$target_dir/tmp/wconf-bench}
export WCONF_RUN_LOG="$log" WCONF_CRITERION_DIR="$target_dir/criterion"
export WCONF_RUN_INFO="nproc $(nproc), $(uname -sr), $(df -T "$bench_dir" | awk 'NR == 2 { print $2 " on " $1 }'), warm-up ${warm_up_s} s, measurement ${measure_s} s, $(git rev-parse --short HEAD) $(date -u +%Y-%m-%dT%H:%MZ)"
python3 - <<'EOF'
import glob, json, os, re

PREFIX = "wconf-bench "
# Targets from the issue: 64 appenders of 100 B records, and replay of 100 B records.
APPEND_TARGET = "wal_append/100B/appenders/64"
APPEND_RECORDS_PER_S_MIN = 100_000
APPEND_RECORDS_PER_SYNC_MIN = 50
REPLAY_RECORDS_PER_S_MIN = 2_000_000

medians_ns = {}
for path in glob.glob(os.path.join(os.environ["WCONF_CRITERION_DIR"], "**", "new", "benchmark.json"), recursive=True):
    with open(path) as f:
        full_id = json.load(f)["full_id"]
    with open(os.path.join(os.path.dirname(path), "estimates.json")) as f:
        medians_ns[full_id] = json.load(f)["median"]["point_estimate"]

runs = []
with open(os.environ["WCONF_RUN_LOG"]) as f:
    for line in f:
        if line.startswith(PREFIX):
            bench_id, *fields = line[len(PREFIX):].split()
            runs.append((bench_id, dict(kv.split("=", 1) for kv in fields)))

def duration(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"

def verdict(ok):
    return "pass" if ok else "**FAIL**"

print()
print(f"WAL benchmarks: {os.environ['WCONF_RUN_INFO']}")
print()
print("| benchmark | records/iter | median time/iter | records/s | MB/s (log) | records/fsync mean (p50) | fsync p50 / p99 | target |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for bench_id, r in runs:
    ns = medians_ns.get(bench_id)
    if ns is None:
        print(f"| {bench_id} | | no criterion estimate (test mode?) | | | | | |")
        continue
    replay = bench_id.startswith("wal_replay/")
    records = int(r["records"] if replay else r["records_per_iter"])
    records_per_s = records / (ns / 1e9)
    mb_per_s = records_per_s * int(r["frame_bytes"]) / 1e6
    if replay:
        per_sync = sync = ""
        target = f"≥ 2M records/s: {verdict(records_per_s >= REPLAY_RECORDS_PER_S_MIN)}" if r["payload_bytes"] == "100" else ""
    else:
        per_sync = f"{float(r['records_per_sync_mean']):.1f} ({r['records_per_sync_p50']})"
        sync = f"{r['sync_us_p50']} / {r['sync_us_p99']} µs"
        target = ""
        if bench_id == APPEND_TARGET:
            target = (f"≥ 100k records/s: {verdict(records_per_s >= APPEND_RECORDS_PER_S_MIN)}; "
                      f"≥ 50 records/fsync: {verdict(float(r['records_per_sync_mean']) >= APPEND_RECORDS_PER_SYNC_MIN)}")
        elif bench_id.startswith("wal_append_latency/"):
            target = f"≈ one fdatasync: latency = {ns / 1e3 / max(int(r['sync_us_p50']), 1):.2f} × fsync p50"
    print(f"| {bench_id} | {records} | {duration(ns)} | {records_per_s:,.0f} | {mb_per_s:,.1f} | {per_sync} | {sync} | {target} |")
print()
print("Medians are criterion's median of per-iteration times (target/criterion/**/new/estimates.json).")
print("MB/s counts log bytes (frames: 24-byte header + payload, padded to 8; 1 MB = 10^6 B).")
print("records/fsync and fsync latency are the WAL's own telemetry over warm-up and measurement.")
EOF
