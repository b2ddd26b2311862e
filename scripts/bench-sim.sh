#!/usr/bin/env bash
# The simulator's performance target: the reference drill (scenarios/reference.toml:
# 24 simulated hours, 8 VMs x 2 disks of 1 GiB, 5-minute cycles, 256 KiB written per disk per
# cycle, every point verified) at >= 30,000x real time (issue 20). Runs it RUNS times (default 3) and
# prints each run's speed line (simulated seconds per wall second, churn bytes per wall second)
# and the median. Usage: scripts/bench-sim.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build -q --release -j2
speeds=()
for _ in $(seq "$runs"); do
  out=$(./target/release/drplane sim run scenarios/reference.toml)
  echo "$out" | grep -E "events in|^speed"
  echo "$out" | grep -q FAILED && { echo "the drill failed its checks"; exit 1; }
  speeds+=("$(echo "$out" | sed -n 's/^speed: \([0-9]*\)x real time.*/\1/p')")
done
median=$(printf '%s\n' "${speeds[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: ${median}x real time (target >= 30000x)"
