#!/usr/bin/env bash
# The daemon with a large config: issue 5's "p99 while a snapshot is
# written stays within 2x" and issue 7's "RSS under 3x the config's JSON
# size + 64 MiB". Builds release, starts one wconfd on an empty data
# directory, then:
#   1. wconf-bench txn at 64 connections after adding a --pad-config-mb
#      document under /pad: the baseline p99, no snapshot;
#   2. the same with --snapshot-every 0.2, so a snapshot of the whole
#      document is being written for most of the window;
# The daemon's own snapshot policy is off (both triggers 0), so the
# baseline runs have no snapshot at all: at the defaults it would
# take one every 100,000 records, every few seconds at these rates.
#   3. the same as 1 again, so drift (page cache, log growth) shows.
# After each it reads the daemon's VmRSS and VmHWM (reset before each run
# through /proc/PID/clear_refs) from /proc and the size of the document's
# JSON (GET /v1/config), and prints one summary line per target with pass
# or fail.
#
# Usage: benches/run-big-config.sh
# Environment:
#   WCONF_BIG_MB            MB of padding (default 100)
#   WCONF_BIG_DURATION_S    seconds measured per run (default 10)
#   WCONF_BIG_CONNECTIONS   connections (default 64)
#   WCONF_BIG_DATA_DIR      data directory, emptied first (default
#                           target/tmp/wconf-big; a real disk, not tmpfs)
#   WCONF_BIG_PORT          port on 127.0.0.1 (default 7381)
#   WCONF_BIG_DAEMON_ARGS   wconfd flags (default: the snapshot policy off,
#                           "--snapshot-every-records=0 --snapshot-every-bytes=0")
#   WCONF_BIG_OUT           where the JSON reports go (default target/tmp/wconf-big-reports)
# Take numbers for the record only on an otherwise idle machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
mb=${WCONF_BIG_MB:-100}
duration_s=${WCONF_BIG_DURATION_S:-10}
connections=${WCONF_BIG_CONNECTIONS:-64}
daemon_args=${WCONF_BIG_DAEMON_ARGS:---snapshot-every-records=0 --snapshot-every-bytes=0}
port=${WCONF_BIG_PORT:-7381}
addr=127.0.0.1:$port

cargo build --release --bin wconfd --bin wconf-bench
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
data=${WCONF_BIG_DATA_DIR:-$target_dir/tmp/wconf-big}
out=${WCONF_BIG_OUT:-$target_dir/tmp/wconf-big-reports}
rm -rf "$data" "$out"
mkdir -p "$(dirname "$data")" "$out"
echo "machine: nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"

: >"$data.log"
# shellcheck disable=SC2086 # $daemon_args is a list of flags
"$bin/wconfd" --data-dir "$data" --listen "$addr" $daemon_args >"$data.log" 2>&1 &
daemon_pid=$!
trap 'kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    grep -q '^wconfd ready' "$data.log" && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^wconfd ready' "$data.log" || { echo "wconfd did not start" >&2; exit 1; }

run() { # name, more flags
    local name=$1
    shift
    # Resets VmHWM, so each run's peak is its own (not the previous run's
    # whole-document read below).
    echo 5 >"/proc/$daemon_pid/clear_refs"
    "$bin/wconf-bench" --addr "$addr" --workload txn --connections "$connections" \
        --duration "$duration_s" --warmup 2 --daemon-pid "$daemon_pid" --json "$@" >"$out/$name.json"
    grep -E '^(VmRSS|VmHWM)' "/proc/$daemon_pid/status" | tr -s ' ' >"$out/$name.mem"
    python3 - "$addr" >"$out/$name.doc" <<'PY'
import sys, urllib.request
print(len(urllib.request.urlopen(f"http://{sys.argv[1]}/v1/config", timeout=60).read()))
PY
}
run baseline --pad-config-mb "$mb"
run snapshots --snapshot-every 0.2
run baseline-again

python3 - "$out" "$mb" <<'PY'
import json, sys
out, mb = sys.argv[1], sys.argv[2]
def load(name):
    r = json.load(open(f"{out}/{name}.json"))
    mem = dict(l.split(":") for l in open(f"{out}/{name}.mem").read().split("\n") if l)
    kib = {k: int(v.strip().split()[0]) for k, v in mem.items()}
    doc = int(open(f"{out}/{name}.doc").read())
    return r, kib, doc
rows = {n: load(n) for n in ("baseline", "snapshots", "baseline-again")}
for n, (r, kib, doc) in rows.items():
    s = r.get("snapshots") or {}
    print(f"{n:>15}: {r['throughput']:>9,.0f} changes/s, p50 {r['latency_us']['p50']} µs, "
          f"p99 {r['latency_us']['p99']} µs, p999 {r['latency_us']['p999']} µs, errors {r['errors']['total']}, "
          f"snapshots {s.get('taken', 0)} (longest {s.get('duration_ms_max', 0)} ms, stall {s.get('stall_us_max', 0)} µs), "
          f"RSS {kib['VmRSS'] / 1024:.0f} MiB (peak {kib['VmHWM'] / 1024:.0f} MiB), document {doc / 1e6:.1f} MB")
base = min(rows["baseline"][0]["latency_us"]["p99"], rows["baseline-again"][0]["latency_us"]["p99"])
snap = rows["snapshots"][0]["latency_us"]["p99"]
ratio = snap / base
print(f"p99 with snapshots / without: {snap} / {base} µs = {ratio:.2f}x (target <= 2x): {'pass' if ratio <= 2 else 'FAIL'}")
doc = rows["baseline-again"][2]
peak = max(kib["VmHWM"] for _, kib, _ in rows.values()) * 1024
limit = 3 * doc + 64 * 2**20
print(f"peak RSS {peak / 2**20:.0f} MiB vs 3 x {doc / 1e6:.1f} MB + 64 MiB = {limit / 2**20:.0f} MiB: "
      f"{'pass' if peak <= limit else 'FAIL'}")
PY
