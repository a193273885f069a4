#!/usr/bin/env bash
# Measures wal-dump's speed targets (issue 4) from a warm page cache:
#   - `verify` reads at least 1 GB/s;
#   - `list --format ndjson` is limited by its output, not by decoding.
#
# Usage: benches/run-wal-dump-bench.sh
# Environment:
#   WCONF_BENCH_DUMP_BYTES  frame bytes of the log (default 1000000000); the
#                           log is built once (wal-tools/examples/bench_log.rs:
#                           daemon records, ~100-byte patches) and cached
#   WCONF_BENCH_DIR         where it is kept (default target/tmp/wconf-bench)
#   WCONF_BENCH_RUNS        timed runs of each command (default 5); the
#                           median is reported
#
# For `list`, three runs over the same records are timed, all to /dev/null:
#   stats        decodes every record (bincode, patch JSON), prints a summary
#   list text    decodes and formats one line a record
#   list ndjson  decodes and serialises one JSON object a record
# and the ndjson output bytes are counted. Decoding costs what `stats` costs;
# what `list` costs beyond it is formatting and writing the output. Each row
# gives the median wall time and the median CPU time (user + system) of the
# child: on a busy machine the CPU time is the steadier number, but the
# targets are wall-clock ones, so quote a run on a quiet machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bytes=${WCONF_BENCH_DUMP_BYTES:-1000000000}
runs=${WCONF_BENCH_RUNS:-5}
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
root=${WCONF_BENCH_DIR:-$target_dir/tmp/wconf-bench}
log="$root/wal-dump-$bytes"

cargo build --release -q -p wal-tools --bin wal-dump --example bench_log
dump="$target_dir/release/wal-dump"
if [ ! -e "$log/COMPLETE" ]; then
    rm -rf "$log"
    mkdir -p "$root"
    echo "building a $bytes-byte log in $log (once)" >&2
    "$target_dir/release/examples/bench_log" "$log" "$bytes" >/dev/null
    touch "$log/COMPLETE"
fi

export DUMP="$dump" LOG="$log" RUNS="$runs"
export INFO="nproc $(nproc), $(uname -sr), $(git rev-parse --short HEAD) $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - <<'EOF'
import glob, json, os, resource, statistics, subprocess, time

dump, log, runs = os.environ["DUMP"], os.environ["LOG"], int(os.environ["RUNS"])
segments = sorted(glob.glob(os.path.join(log, "*.wal")))
file_bytes = sum(os.path.getsize(s) for s in segments)
for s in segments:  # warm the page cache
    with open(s, "rb") as f:
        while f.read(1 << 24):
            pass

cpu = {}

def timed(args):
    """Median wall time of `runs` runs; the median CPU time (user + system)
    goes to cpu[...], which a busy machine inflates far less than wall time."""
    times, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([dump, *args], stdout=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    cpu[" ".join(args[:1])] = statistics.median(cpus)
    return statistics.median(times)

verify_out = subprocess.run([dump, "verify", log], capture_output=True, text=True)
assert verify_out.returncode == 0, verify_out.stdout + verify_out.stderr
stats = subprocess.run([dump, "stats", log, "--format", "json"], capture_output=True, text=True)
s = json.loads(stats.stdout)
records, frame_bytes = s["records"], s["bytes"]["frames"]
ndjson_bytes = 0
p = subprocess.Popen([dump, log, "--format", "ndjson"], stdout=subprocess.PIPE)
while chunk := p.stdout.read(1 << 20):
    ndjson_bytes += len(chunk)
p.wait()

verify_s = timed(["verify", log])
stats_s = timed(["stats", log])
ndjson_s = timed([log, "--format", "ndjson"])
ndjson_cpu = cpu[log]
text_s = timed([log])
print(f"wal-dump benchmarks: {os.environ['INFO']}")
print(f"log: {len(segments)} segments, {file_bytes/1e9:.2f} GB of files, "
      f"{frame_bytes/1e9:.2f} GB of frames, {records:,} records; median of {runs} runs, warm cache")
print()
print("| command | median wall | median CPU | throughput (wall) | target |")
print("|---|---:|---:|---:|---|")
# Judged on frame bytes: the zeros of a preallocated tail are cheaper to read.
gbps = frame_bytes / verify_s / 1e9
print(f"| verify | {verify_s*1e3:.0f} ms | {cpu['verify']*1e3:.0f} ms | {gbps:.2f} GB/s of frames "
      f"({file_bytes/verify_s/1e9:.2f} GB/s of segment files) | >= 1 GB/s: {'pass' if gbps >= 1 else 'FAIL'} |")
print(f"| stats (decode every record) | {stats_s*1e3:.0f} ms | {cpu['stats']*1e3:.0f} ms | {records/stats_s/1e6:.2f} M records/s | |")
print(f"| list, text | {text_s*1e3:.0f} ms | {cpu[log]*1e3:.0f} ms | {records/text_s/1e6:.2f} M records/s | |")
share = (ndjson_cpu - cpu['stats']) / ndjson_cpu
print(f"| list --format ndjson | {ndjson_s*1e3:.0f} ms | {ndjson_cpu*1e3:.0f} ms | {records/ndjson_s/1e6:.2f} M records/s, "
      f"{ndjson_bytes/ndjson_s/1e6:.0f} MB/s of output ({ndjson_bytes/1e9:.2f} GB) | "
      f"formatting and writing output are {share:.0%} of its CPU time: {'pass' if share > 0.5 else 'FAIL'} |")
EOF
