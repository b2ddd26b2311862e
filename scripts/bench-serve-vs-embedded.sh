#!/usr/bin/env bash
# Replication through `drplane blob serve` over loopback HTTP against the same replication into
# an embedded store (issue 20's target: HTTP >= 90% of embedded). One realistic disk
# (`bench make-disk`, seed 1), `drplane bench --churn none --no-verify --json` into each in
# turn, alternating every round so a slow minute on the VM lands on both; the medians of the
# initial replication's time and their ratio are printed, with the CPU time of the bench
# process and of the server, and the ratio of the fastest run of each. Both stores keep
# `process` durability (the embedded one is the bench's own temporary store; the server is
# started with --durability process).
# Usage: [DRPLANE_BIN=PATH] [SERVER_THREADS=N] scripts/bench-serve-vs-embedded.sh [SIZE] [ROUNDS] [PIPELINE_THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
rounds=${2:-5}
threads=${3:-$(nproc)}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# DRPLANE_BIN: measure that binary instead of building this tree's.
if [ -n "${DRPLANE_BIN:-}" ]; then
  bin=$DRPLANE_BIN
else
  cargo build --release -q -j2 --bin drplane
  bin=$PWD/target/release/drplane
fi
"$bin" bench make-disk "$work/disk.raw" --size "$size" > /dev/null
# The server at `process` durability, as the embedded store the bench makes by default.
# SERVER_THREADS: the server's --threads (default: one per core).
"$bin" blob serve --listen 127.0.0.1:0 --data "$work/served" --durability process \
  ${SERVER_THREADS:+--threads "$SERVER_THREADS"} > "$work/serve.out" 2>/dev/null &
for _ in $(seq 50); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
endpoint=$(sed -n '1s/listening on //p' "$work/serve.out")
[ -n "$endpoint" ] || { echo "blob serve did not start"; exit 1; }
server=$(jobs -p | tail -1)
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
once() { # once NAME [--store URL]
  local name=$1; shift
  sync
  local before; before=$(ticks)
  TMPDIR=$work "$bin" bench --disk "$work/disk.raw" "$@" --churn none --no-verify --json \
    --pipeline-threads "$threads" > "$work/out.json"
  local served=$(( $(ticks) - before ))
  python3 - "$name" "$work/out.json" "$served" "$(getconf CLK_TCK)" >> "$work/results" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
server = int(sys.argv[3]) / int(sys.argv[4]) if sys.argv[1] == "http" else 0.0
print(sys.argv[1], r["initial"]["seconds"], r["initial"]["cpu_seconds"], server)
PY
}
once http --store "$endpoint"  # unmeasured: first touches of memory on a VM
: > "$work/results"
for _ in $(seq "$rounds"); do
  once embedded
  once http --store "$endpoint"
done
python3 - "$work/results" "$size" "$threads" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda kind, col: statistics.median(float(r[col]) for r in rows if r[0] == kind)
e, h = med("embedded", 1), med("http", 1)
print(f"{sys.argv[2]} disk, {sys.argv[3]} pipeline thread(s), medians of {len(rows)//2} rounds:")
print(f"  embedded store: {e:.2f} s ({med('embedded', 2):.2f} s CPU)")
print(f"  blob serve over loopback: {h:.2f} s ({med('http', 2):.2f} s CPU in the bench process, "
      f"{med('http', 3):.2f} s in the server, whole run)")
print(f"  HTTP speed / embedded speed: {100 * e / h:.0f}%")
# The fastest run of each: what each can do when the VM's noise spares it.
best = lambda kind: min(float(r[1]) for r in rows if r[0] == kind)
print(f"  fastest runs: embedded {best('embedded'):.2f} s, HTTP {best('http'):.2f} s "
      f"({100 * best('embedded') / best('http'):.0f}%)")
print("  all:", " ".join(f"{r[0]}={float(r[1]):.2f}" for r in rows))
PY
