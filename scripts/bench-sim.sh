#!/usr/bin/env bash
# The simulator's performance target: the reference drill (scenarios/reference.toml:
# 24 simulated hours, 8 VMs x 2 disks of 1 GiB, 5-minute cycles, 256 KiB written per disk per
# cycle, every point verified) at >= 30,000x real time (issue 20). Runs it RUNS times (default 3) and
# prints each run's speed line (simulated seconds per wall second, churn bytes per wall second),
# its steal time and CPU, and the median. DRPLANE_BIN: run that binary (e.g. a stripped one carried to another
# machine) instead of building this tree's. Usage: [DRPLANE_BIN=PATH] scripts/bench-sim.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
if [ -n "${DRPLANE_BIN:-}" ]; then
  bin=$DRPLANE_BIN
else
  cargo build -q --release -j2 --bin drplane
  bin=$PWD/target/release/drplane
fi
# Steal: CPU time the hypervisor gave to other guests while this one had work (the 8th
# figure of /proc/stat's `cpu` line), as a share of the run's wall time on all cores. A
# sitting's speed follows it, so each run says how much it had.
steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }
cores=$(nproc)
tick=$(getconf CLK_TCK)
speeds=()
# CPU, page faults and peak memory of each run, where GNU time is installed (the kernel's page
# faults are ~15% of a run's CPU on the development VM: docs/replicator.md).
gnu_time=$(command -v /usr/bin/time || true)
usage=$(mktemp)
trap 'rm -f "$usage"' EXIT
for _ in $(seq "$runs"); do
  s0=$(steal_ticks); t0=$(date +%s.%N)
  if [ -n "$gnu_time" ]; then
    out=$("$gnu_time" -f "%U %S %R %M" -o "$usage" "$bin" sim run scenarios/reference.toml)
  else
    out=$("$bin" sim run scenarios/reference.toml)
  fi
  s1=$(steal_ticks); t1=$(date +%s.%N)
  echo "$out" | grep -E "events in|^speed"
  awk -v s="$((s1 - s0))" -v hz="$tick" -v t0="$t0" -v t1="$t1" -v c="$cores" \
    'BEGIN { w = t1 - t0; printf "  steal: %.1f%% of %d cores over %.2f s\n", 100 * s / hz / (w * c), c, w }'
  [ -z "$gnu_time" ] || awk '{ printf "  cpu: %s s user, %s s system, %d minor page faults, %d MiB peak resident\n", $1, $2, $3, $4 / 1024 }' "$usage"
  echo "$out" | grep -q FAILED && { echo "the drill failed its checks"; exit 1; }
  speeds+=("$(echo "$out" | sed -n 's/^speed: \([0-9]*\)x real time.*/\1/p')")
done
median=$(printf '%s\n' "${speeds[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: ${median}x real time (target >= 30000x)"
