#!/usr/bin/env bash
# How the data path scales with threads: `drplane bench --runs RUNS --json` on one kept
# realistic disk for every pipeline-thread count from 1 to THREADS (default: the cores), and a
# table of the medians: the initial replication against its bounds (transforms only; with the
# source reads and the store's writes on the machine's cores; the transforms measured on that
# many threads at once, which takes the machine's own scaling out), how busy the pipeline's pool kept
# its threads, the CPU of the other threads (the store's writers) and the share of the cores the
# process left unused (a serial part shows there), and the restore against its own bound. Then
# the serial parts from the pipeline's own counters (the cycle's thread settling groups, the
# store's writers per writer thread): how many threads' transforms they keep fed, and the share
# of the transforms' bound they would allow at 4, 8 and 16 threads with a core each (projected
# from this machine's figures: what a serial part would cost on a bigger one).
# Saves each count's report as bench-scaling-N.json in OUT (for `drplane bench compare`).
# THREAD_COUNTS="1 2 4 8 16": only those counts instead of every one up to THREADS;
# DRPLANE_BIN: run that binary (e.g. a stripped one carried to a machine with more cores)
# instead of building this tree's.
# Usage: [THREAD_COUNTS=...] [DRPLANE_BIN=PATH] scripts/bench-scaling.sh [SIZE] [RUNS] [THREADS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1G}
runs=${2:-3}
threads=${3:-$(nproc)}
out=${4:-target/bench-scaling}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${DRPLANE_BIN:-}" ]; then
  bin=$DRPLANE_BIN
else
  cargo build --release -q -j2 --bin drplane
  bin=$PWD/target/release/drplane
fi
counts=${THREAD_COUNTS:-$(seq 1 "$threads")}
"$bin" bench make-disk "$work/disk.raw" --size "$size" > /dev/null
for n in $counts; do
  "$bin" bench --disk "$work/disk.raw" --churn none --runs "$runs" --json \
    --pipeline-threads "$n" > "$out/bench-scaling-$n.json"
done
python3 - "$out" "$counts" "$size" "$runs" <<'PY'
import json, sys
out, counts = sys.argv[1], [int(n) for n in sys.argv[2].split()]
print(f"{sys.argv[3]} realistic disk, medians of {sys.argv[4]} runs")
print("threads  initial s  CPU s  of bound  with I/O  measured  pool busy  writers s  unused  "
      "restore s  of restore bound")
pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
for n in counts:
    r = json.load(open(f"{out}/bench-scaling-{n}.json"))
    f = r["figures"]
    wall = f["initial_seconds"]
    # The pool's CPU against its threads' wall time; the cores' time the process left unused.
    busy = f.get("initial_pool_cpu_seconds")
    busy = None if busy is None else busy / (n * wall)
    cores = (r["runs"][0] if "runs" in r else r)["cores"]
    unused = f.get("initial_unused_core_seconds")
    unused = None if unused is None else unused / (cores * wall)
    print(f"{n:7}  {wall:9.2f}  {f.get('initial_cpu_seconds', 0):5.2f}  "
          f"{pct(f.get('pipeline_efficiency')):>8}  {pct(f.get('replication_efficiency')):>8}  "
          f"{pct(f.get('measured_efficiency')):>8}  "
          f"{pct(busy):>9}  {f.get('initial_other_cpu_seconds', 0):9.2f}  {pct(unused):>6}  "
          f"{f.get('restore_seconds', 0):9.2f}  {pct(f.get('restore_efficiency')):>16}")
print()
print("threads  settling CPU s  writers CPU s  outside groups s  feeds threads  "
      "projected at 4 / 8 / 16 threads")
for n in counts:
    r = json.load(open(f"{out}/bench-scaling-{n}.json"))
    f = r["figures"]
    projected = [f.get(f"projected_{k}_thread_efficiency") for k in (4, 8, 16)]
    print(f"{n:7}  {f.get('initial_serial_cpu_seconds', 0):14.3f}  "
          f"{f.get('initial_other_cpu_seconds', 0):13.2f}  "
          f"{f.get('initial_outside_groups_seconds', 0):16.3f}  "
          f"{f.get('serial_ceiling_threads', 0):13.0f}  "
          f"{' / '.join(pct(p) for p in projected)}")
PY
