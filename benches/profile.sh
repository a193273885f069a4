#!/usr/bin/env bash
# Profiles wconfd under one wconf-bench workload and draws a flame graph.
# Installs what it needs itself: `perf` from Debian's linux-perf package
# (apt-get, as root) when it is missing, and inferno's flame graph tools
# with `cargo install` into target/tools. Builds release (which keeps debug
# info, see Cargo.toml), starts a fresh wconfd on an empty data directory,
# runs the workload, and records the daemon with perf (DWARF call graphs)
# for the measured window only. Then, for 2 s more of the same load, it
# records the scheduler system-wide (`perf sched record`) and reports how
# long each thread of the daemon and the generator waited between being
# woken and running (`perf sched latency`): on a virtual machine whose idle
# vCPUs halt, that delay is paid on every hand-off between threads.
#
# Usage: benches/profile.sh [workload] [connections]     (default: txn 64)
# Environment:
#   WCONF_PROFILE_DURATION_S   seconds recorded (default 5, after 2 s warm-up)
#   WCONF_PROFILE_ARGS         more wconf-bench flags, e.g. "--keys 10000"
#   WCONF_PROFILE_OUT          output directory (default benches/results/profile)
#   WCONF_PROFILE_PORT         the daemon's port on 127.0.0.1 (default 7383)
#   WCONF_PROFILE_TRANSPORT    tcp (default), or unix: drive the daemon over
#                              its Unix socket (wconfd --socket)
#   WCONF_PROFILE_SCHED_S      seconds of scheduler trace after the profile
#                              (default 2; 0 skips it)
#   WCONF_PROFILE_KEEP         if set, keep <out>/<name>.perf.data (and
#                              <name>.sched.data) for perf report
# Output: <out>/<workload>-<connections>.svg (the flame graph; -unix before
#         the suffix over the Unix socket),
#         <out>/<workload>-<connections>.txt (the wconf-bench report of the
#         profiled run, the samples per daemon thread, and the top symbols
#         by self time).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
workload=${1:-txn}
connections=${2:-64}
duration_s=${WCONF_PROFILE_DURATION_S:-5}
sched_s=${WCONF_PROFILE_SCHED_S:-2}
extra=${WCONF_PROFILE_ARGS:-}
out=${WCONF_PROFILE_OUT:-benches/results/profile}
port=${WCONF_PROFILE_PORT:-7383}
addr=127.0.0.1:$port
transport=${WCONF_PROFILE_TRANSPORT:-tcp}
case $transport in
tcp | unix) ;;
*) echo "profile.sh: WCONF_PROFILE_TRANSPORT must be tcp or unix, not $transport" >&2; exit 2 ;;
esac

if ! command -v perf >/dev/null || ! perf --version >/dev/null 2>&1; then
    echo "profile.sh: installing perf (Debian package linux-perf)" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "profile.sh: perf is missing and installing it needs root: apt-get install linux-perf" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >&2
fi
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
tools=$target_dir/tools
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    echo "profile.sh: installing inferno into $tools" >&2
    cargo install --locked --root "$tools" inferno >&2
fi

cargo build --release --bin wconfd --bin wconf-bench
bin=$target_dir/release
data=$target_dir/tmp/wconf-profile
name=$workload-$connections
mkdir -p "$out" "$(dirname "$data")"
serve=(--listen "$addr")
drive=(--addr "$addr")
if [ "$transport" = unix ]; then
    serve+=(--socket "$data.sock")
    drive=(--socket "$data.sock")
    name=$name-unix
fi
rm -rf "$data"

: >"$data.log"
"$bin/wconfd" --data-dir "$data" "${serve[@]}" >"$data.log" 2>&1 &
daemon_pid=$!
perf_pid=
cleanup() {
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null || true
    kill "$daemon_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 300); do
    grep -q '^wconfd ready' "$data.log" && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^wconfd ready' "$data.log" || { echo "wconfd did not start" >&2; exit 1; }

# shellcheck disable=SC2086 # $extra is a list of flags
"$bin/wconf-bench" "${drive[@]}" --workload "$workload" --connections "$connections" \
    --duration "$((duration_s + sched_s + 3))" --warmup 2 --daemon-pid "$daemon_pid" $extra >"$out/$name.report" &
bench_pid=$!
sleep 2 # the warm-up: record only the measured window
perf record -q -F 499 --call-graph dwarf,16384 -p "$daemon_pid" -o "$out/$name.perf.data" \
    -- sleep "$duration_s" 2>/dev/null
# The load runs 3 s longer than both recordings, for perf's own start and
# flush between them.
if [ "$sched_s" -gt 0 ]; then
    perf sched record -q -o "$out/$name.sched.data" -- sleep "$sched_s" >/dev/null 2>&1
fi
wait "$bench_pid"

perf script -i "$out/$name.perf.data" 2>/dev/null |
    "$tools/bin/inferno-collapse-perf" |
    "$tools/bin/inferno-flamegraph" --title "wconfd: $workload at $connections connections" >"$out/$name.svg"
{
    echo "wconfd under wconf-bench $workload, $connections connections over $transport, $(git rev-parse --short HEAD), nproc $(nproc)"
    echo
    cat "$out/$name.report"
    echo
    echo "Samples by thread:"
    perf report -i "$out/$name.perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | sed -n 1,12p | cut -c1-100
    echo
    echo "Top symbols by self time:"
    perf report -i "$out/$name.perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | sed -n 1,30p | cut -c1-140
    if [ "$sched_s" -gt 0 ]; then
        echo
        echo "Wake-up to run delay by thread, ${sched_s} s after the profile (perf sched latency):"
        perf sched latency -i "$out/$name.sched.data" --sort avg 2>/dev/null |
            grep -E '^ +(Task|actix-rt|tokio-rt|wal-writer|wconfd|wconf-bench|wconf-)' | cut -c1-95
    fi
} >"$out/$name.txt"
[ -n "${WCONF_PROFILE_KEEP:-}" ] || rm -f "$out/$name.perf.data" "$out/$name.sched.data" "$out/$name.report"
echo "$out/$name.svg"
echo "$out/$name.txt"
