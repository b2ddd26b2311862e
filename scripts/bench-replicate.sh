#!/usr/bin/env bash
# Reproduce the replication figures of docs/replicator.md on this machine:
#   1. initial replication of a 1 GiB realistic disk (raw and VHDX) vs `zstd -1 -T2` on it;
#   2. a tracked delta cycle at 1% churn as a share of the initial replication time;
#   3. a digest-scan delta (untracked file) at 1% churn, for comparison;
#   4. peak RSS replicating a 64 GiB sparse disk;
#   5. `drplane bench` on the same disk: stage rates, the pipeline bound, initial and deltas.
# Usage: scripts/bench-replicate.sh [WORKDIR] [RUNS]   (needs zstd, qemu-img, /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/drplane-bench}
runs=${2:-3}
mkdir -p "$work"
cargo build -q --release -j2
cargo build -q --release -j2 -p datapath --example tracked_delta
bin=$PWD/target/release/drplane
ex=$PWD/target/release/examples
export DRPLANE_PFX_PASSWORD=bench
cd "$work"
[ -f real.raw ] || "$bin" bench make-disk real.raw --size 1G --seed 1
[ -f real.vhdx ] || qemu-img convert -f raw -O vhdx -o subformat=dynamic real.raw real.vhdx
[ -f reg/bench.pfx ] || "$bin" register --vault bench --out reg >/dev/null
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }

# Warm the page cache so every contender reads from memory.
cat real.raw real.vhdx >/dev/null
# Every timed run starts with the previous run's output removed and written back (`sync`), so
# no tool pays for another's writeback.
fresh() { rm -rf "$@"; sync; }
zstd_s=$(for _ in $(seq "$runs"); do fresh real.zst; secs zstd -q -1 -T2 -f real.raw -o real.zst; done | median)
raw_s=$(for _ in $(seq "$runs"); do fresh st; secs "$bin" replicate --disk real.raw --store st --pfx reg/bench.pfx --name d; done | median)
vhdx_s=$(for _ in $(seq "$runs"); do fresh st; secs "$bin" replicate --disk real.vhdx --store st --pfx reg/bench.pfx --name d; done | median)
echo "initial replication, 1 GiB realistic disk (median of $runs):"
echo "  zstd -1 -T2 (raw)        ${zstd_s} s"
echo "  drplane replicate raw    ${raw_s} s   ($(echo "$zstd_s / $raw_s" | bc -l | cut -c1-4)x zstd)"
echo "  drplane replicate vhdx   ${vhdx_s} s   ($(echo "$zstd_s / $vhdx_s" | bc -l | cut -c1-4)x zstd)"
fast_s=$(for _ in $(seq "$runs"); do fresh st; secs "$bin" replicate --disk real.raw --store st --pfx reg/bench.pfx --name d --zstd-level=-3; done | median)
echo "  drplane raw, zstd -3     ${fast_s} s   ($(echo "$zstd_s / $fast_s" | bc -l | cut -c1-4)x zstd)"

echo "tracked delta at 1% churn (agent + change tracker, embedded store):"
for _ in $(seq "$runs"); do
  cp real.raw churn.raw && sync && rm -rf tst
  "$ex/tracked_delta" churn.raw tst 1 | tail -1
done

echo "digest-scan delta at 1% churn (an untracked file on the CLI):"
rm -rf st && cp real.raw churn.raw
"$bin" replicate --disk churn.raw --store st --pfx reg/bench.pfx --name d >/dev/null
python3 - <<'PY'
import random
random.seed(7)
with open("churn.raw", "r+b") as f:
    for _ in range(164):
        f.seek(random.randrange(16384) * 65536)
        f.write(bytes(random.getrandbits(8) if i % 4 == 0 else 97 + i % 26 for i in range(65536)))
PY
scan_s=$(secs "$bin" replicate --disk churn.raw --store st --pfx reg/bench.pfx --name d)
echo "  ${scan_s} s ($(echo "100 * $scan_s / $raw_s" | bc -l | cut -c1-4)% of the initial replication)"

echo "peak RSS replicating a 64 GiB sparse disk (256 MiB of data spread over it):"
rm -f sparse.raw && truncate -s 64G sparse.raw
for i in $(seq 0 63); do
  dd if=real.raw of=sparse.raw bs=1M count=4 skip=$((i * 16)) seek=$((i * 1024)) conv=notrunc status=none
done
rm -rf st
/usr/bin/time -f "  initial: %e s, max RSS %M KiB" "$bin" replicate --disk sparse.raw --store st --pfx reg/bench.pfx --name s >/dev/null
/usr/bin/time -f "  delta:   %e s, max RSS %M KiB" "$bin" replicate --disk sparse.raw --store st --pfx reg/bench.pfx --name s >/dev/null
rm -f sparse.raw churn.raw real.zst

echo "drplane bench on the same disk (stages, initial, tracked deltas at 1% and 5%, verified):"
"$bin" bench --disk real.raw --churn 1,5 --sample-mib 128
