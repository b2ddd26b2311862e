#!/usr/bin/env bash
# What power-loss durability (the default of store directories and `blob serve`) costs against
# `process` durability: `drplane replicate` of a 1 GiB realistic disk into a fresh store
# directory, and through `blob serve` over loopback, alternating the two durabilities, ROUNDS
# rounds each (default 3); then a delta cycle after 10 random 1 MiB writes. Prints each run's
# wall time and the medians. `sync` before every run, so no run pays for another's writeback.
# Usage: [DRPLANE_BIN=PATH] scripts/bench-durability.sh [WORKDIR] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/drplane-durability}
rounds=${2:-3}
if [ -n "${DRPLANE_BIN:-}" ]; then
  bin=$DRPLANE_BIN
else
  cargo build -q --release -j2 --bin drplane
  bin=$PWD/target/release/drplane
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
export DRPLANE_PFX_PASSWORD=durability-bench
[ -f "$work/disk.raw" ] || "$bin" bench make-disk "$work/disk.raw" --size 1G --seed 1 > /dev/null
[ -f "$work/reg/bench.pfx" ] || "$bin" register --vault bench --out "$work/reg" > /dev/null 2>&1
cat "$work/disk.raw" > /dev/null
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT
# A fresh `blob serve` at durability $1 over $work/served; sets $endpoint.
serve() {
  stop_server
  rm -rf "$work/served" "$work/serve.out"
  "$bin" blob serve --listen 127.0.0.1:0 --data "$work/served" --durability "$1" > "$work/serve.out" 2>/dev/null &
  server_pid=$!
  for _ in $(seq 50); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
  endpoint=$(sed -n '1s/listening on //p' "$work/serve.out")
  [ -n "$endpoint" ] || { echo "blob serve did not start"; exit 1; }
}

declare -A times
for round in $(seq "$rounds"); do
  for durability in process power; do
    rm -rf "$work/st" && sync
    embedded=$(secs "$bin" replicate --disk "$work/disk.raw" --store "$work/st" \
      --durability "$durability" --pfx "$work/reg/bench.pfx" --name d)
    times[embedded-$durability]+="$embedded "
    serve "$durability" && sync
    served=$(secs "$bin" replicate --disk "$work/disk.raw" --store "$endpoint" \
      --pfx "$work/reg/bench.pfx" --name d)
    times[serve-$durability]+="$served "
    stop_server
    echo "round $round, $durability: store directory $embedded s, through blob serve $served s"
  done
done
echo "initial replication of the 1 GiB realistic disk, medians of $rounds:"
for durability in process power; do
  e=$(echo "${times[embedded-$durability]}" | tr ' ' '\n' | grep . | median)
  s=$(echo "${times[serve-$durability]}" | tr ' ' '\n' | grep . | median)
  echo "  $durability: store directory $e s, through blob serve $s s"
done

# A delta: 10 random 1 MiB writes, then one cycle, into each durability's store.
echo "delta cycle after 10 random 1 MiB writes (160 blocks):"
for durability in process power; do
  rm -rf "$work/st" && cp "$work/disk.raw" "$work/churn.raw"
  "$bin" replicate --disk "$work/churn.raw" --store "$work/st" --durability "$durability" \
    --pfx "$work/reg/bench.pfx" --name d > /dev/null
  python3 - "$work/churn.raw" <<'PY'
import random, sys
random.seed(11)
with open(sys.argv[1], "r+b") as f:
    for _ in range(10):
        f.seek(random.randrange(1024) << 20)
        f.write(random.randbytes(1 << 20))
PY
  sync
  t=$(secs "$bin" replicate --disk "$work/churn.raw" --store "$work/st" --durability "$durability" \
    --pfx "$work/reg/bench.pfx" --name d)
  echo "  $durability: $t s"
done
