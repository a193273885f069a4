#!/usr/bin/env bash
# Load test of the daemon: builds release, then runs wconf-bench's five
# workloads (txn, job, contended, read, and ping, the HTTP path alone) at
# 1, 16, 64 and 256 connections, each workload against a fresh wconfd on an empty data directory, and
# renders the reports as benches/results/results.md (a markdown table headed
# by how it was made) plus throughput.svg and latency.svg. The raw JSON
# reports stay in benches/results/raw/, so `wconf-bench plot` can redraw
# everything from them.
#
# Usage: benches/run-load.sh
# Environment:
#   WCONF_LOAD_DURATION_S    seconds measured per run (default 5)
#   WCONF_LOAD_WARMUP_S      seconds of load before measuring (default 2)
#   WCONF_LOAD_CONNECTIONS   connection counts (default "1 16 64 256")
#   WCONF_LOAD_WORKLOADS     workloads (default "txn job contended read ping")
#   WCONF_LOAD_ARGS          more wconf-bench flags for every run, e.g. "--keys 10000"
#   WCONF_LOAD_OUT           output directory (default benches/results)
#   WCONF_LOAD_DATA_DIR      the daemon's data directory, emptied before each
#                            workload (default target/tmp/wconf-load); must be
#                            on the disk to measure, not tmpfs
#   WCONF_LOAD_PORT          the daemon's port on 127.0.0.1 (default 7379)
#   WCONF_LOAD_TRANSPORT     tcp (default), or unix: the daemon also serves
#                            <data dir>.sock (wconfd --socket) and wconf-bench
#                            drives it there (--socket), as a job system on
#                            the same host would
#
# With the defaults the runs take about 2.5 minutes (20 runs of 7 s, plus the
# daemon's starts), after the build. Take numbers for the record only on an
# otherwise idle machine: the table's last column shows the CPU that other
# processes used during each run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration_s=${WCONF_LOAD_DURATION_S:-5}
warmup_s=${WCONF_LOAD_WARMUP_S:-2}
connections=${WCONF_LOAD_CONNECTIONS:-1 16 64 256}
workloads=${WCONF_LOAD_WORKLOADS:-txn job contended read ping}
extra=${WCONF_LOAD_ARGS:-}
out=${WCONF_LOAD_OUT:-benches/results}
port=${WCONF_LOAD_PORT:-7379}
addr=127.0.0.1:$port
transport=${WCONF_LOAD_TRANSPORT:-tcp}
case $transport in
tcp | unix) ;;
*) echo "run-load.sh: WCONF_LOAD_TRANSPORT must be tcp or unix, not $transport" >&2; exit 2 ;;
esac

cargo build --release --bin wconfd --bin wconf-bench
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release
data=${WCONF_LOAD_DATA_DIR:-$target_dir/tmp/wconf-load}
serve=(--listen "$addr")
drive=(--addr "$addr")
if [ "$transport" = unix ]; then
    serve+=(--socket "$data.sock")
    drive=(--socket "$data.sock")
fi
raw=$out/raw
rm -rf "$raw"
mkdir -p "$raw" "$(dirname "$data")"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

daemon_pid=
stop_daemon() {
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
        daemon_pid=
    fi
}
trap stop_daemon EXIT

for workload in $workloads; do
    rm -rf "$data"
    "$bin/wconfd" --data-dir "$data" "${serve[@]}" >"$data.log" 2>&1 &
    daemon_pid=$!
    # Wait for the ready line (polled, with a deadline).
    for _ in $(seq 300); do
        grep -q '^wconfd ready' "$data.log" && break
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
        sleep 0.1
    done
    grep -q '^wconfd ready' "$data.log" || { echo "wconfd did not start" >&2; cat "$data.log" >&2; exit 1; }
    for c in $connections; do
        report=$raw/$workload-$c.json
        status=0
        # shellcheck disable=SC2086 # $extra is a list of flags
        "$bin/wconf-bench" "${drive[@]}" --workload "$workload" --connections "$c" \
            --duration "$duration_s" --warmup "$warmup_s" --daemon-pid "$daemon_pid" \
            --json $extra >"$report" || status=$?
        # 1: the run completed with failed requests, which the table shows.
        if [ "$status" -gt 1 ]; then
            echo "wconf-bench $workload at $c connections failed (exit $status)" >&2
            exit 1
        fi
        python3 - "$report" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['workload']:>9} {r['connections']:>4} connections: {r['throughput']:>10,.0f} {r['unit']}/s, "
      f"p50 {r['latency_us']['p50']} µs, p99 {r['latency_us']['p99']} µs, errors {r['errors']['total']}")
PY
    done
    stop_daemon
done

title="Load test: \`${WCONF_LOAD_TRANSPORT:+WCONF_LOAD_TRANSPORT=$transport }benches/run-load.sh\` \
(over $([ "$transport" = unix ] && echo "the daemon's Unix socket" || echo "TCP on loopback"); \
${duration_s} s measured after ${warmup_s} s warm-up${extra:+, $extra}), \
nproc $(nproc), $(free -g | awk '/^Mem:/ { print $2 " GiB" }'), $(uname -sr), \
$(df -T "$(dirname "$data")" | awk 'NR == 2 { print $2 " on " $1 }'), \
load average before $load_before, $(git rev-parse --short HEAD) $(date -u +%Y-%m-%dT%H:%MZ)."
"$bin/wconf-bench" plot "$raw"/*.json --out "$out" --title "$title"
