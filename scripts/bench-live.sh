#!/usr/bin/env bash
# Live replication from qemu-storage-daemon (docs/live-replication.md), measured:
#   1. the initial replication of a live disk (generated realistic content, hosted as FORMAT);
#   2. a delta cycle after 1% of its 64 KiB blocks were rewritten through the guest's NBD export:
#      bytes read vs bytes changed, and its time as a share of the initial replication;
#   3. `drplane bench` on the same content (no QEMU): the pipeline's stage bound, and the live
#      initial replication's rate as a share of it.
# Every cycle is a fresh `drplane replicate --qemu` process (its cost includes the QMP freeze
# and teardown, opening the replica and its digest table).
# Usage: scripts/bench-live.sh [WORKDIR] [SIZE] [FORMAT]   (defaults: /tmp/drplane-live 4G vhdx)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/drplane-live}
size=${2:-4G}
format=${3:-vhdx}
mkdir -p "$work"
cargo build -q --release -j2
bin=$PWD/target/release/drplane
export DRPLANE_PFX_PASSWORD=bench
cd "$work"
[ -f "live-$size.raw" ] || "$bin" bench make-disk "live-$size.raw" --size "$size" --seed 1
disk="live-$size.$format"
[ -f "$disk" ] || qemu-img convert -f raw -O "$format" "live-$size.raw" "$disk"
[ -f reg/bench.pfx ] || "$bin" register --vault bench --out reg >/dev/null
rm -rf store qmp.sock nbd.sock
qemu-storage-daemon \
  --chardev "socket,path=$PWD/qmp.sock,server=on,wait=off,id=qmp0" --monitor chardev=qmp0 \
  --blockdev "driver=file,filename=$PWD/$disk,node-name=file0" \
  --blockdev "driver=$format,file=file0,node-name=disk0" \
  --nbd-server "addr.type=unix,addr.path=$PWD/nbd.sock" \
  --export type=nbd,id=vm0,node-name=disk0,name=vm0,writable=on &
qsd=$!
trap 'kill $qsd 2>/dev/null; wait $qsd 2>/dev/null || true' EXIT
while [ ! -S qmp.sock ] || [ ! -S nbd.sock ]; do sleep 0.1; done
cycle() {
  "$bin" replicate --qemu qmp.sock --node disk0 --nbd-socket nbd.sock --name live \
    --store store --pfx reg/bench.pfx --json
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

cat "live-$size.raw" "$disk" >/dev/null
initial=$(cycle)
init_s=$(field "$initial" seconds)
disk_bytes=$(field "$initial" blocks)
echo "initial replication of a $size live $format disk: ${init_s} s" \
  "($(python3 -c "print(round($disk_bytes * 65536 / $init_s / 2**20))") MiB/s)," \
  "read $(field "$initial" bytes_read) bytes"

# 1% of the blocks rewritten by the guest with realistic, partly compressible bytes.
python3 - "$disk_bytes" <<'PY' > churn.cmds
import random, sys
random.seed(7)
blocks = int(sys.argv[1])
with open("chunk.bin", "wb") as f:
    f.write(bytes(random.getrandbits(8) if i % 4 == 0 else 97 + i % 26 for i in range(65536)))
for b in random.sample(range(blocks), blocks // 100):
    print(f"write -q -s chunk.bin {b * 65536} 64k")
PY
changed=$(($(wc -l < churn.cmds) * 65536))
args=()
while read -r c; do args+=(-c "$c"); done < churn.cmds
qemu-io -f raw "${args[@]}" "nbd+unix:///vm0?socket=$PWD/nbd.sock"

delta=$(cycle)
delta_s=$(field "$delta" seconds)
wall_s=$( { /usr/bin/time -f %e "$bin" replicate --qemu qmp.sock --node disk0 \
  --nbd-socket nbd.sock --name live --store store --pfx reg/bench.pfx >/dev/null; } 2>&1 | tail -1)
echo "delta cycle at 1% churn: wrote $changed bytes; read $(field "$delta" bytes_read)," \
  "changed $(field "$delta" bytes_changed), sent $(field "$delta" bytes_sent);" \
  "cycle ${delta_s} s = $(python3 -c "print(round(100 * $delta_s / $init_s, 2))")% of the initial" \
  "replication (an idle delta's whole process: ${wall_s} s)"

bench=$("$bin" bench --disk "live-$size.raw" --churn none --no-verify --json)
python3 - "$bench" "$init_s" "$disk_bytes" <<'PY'
import json, sys
b = json.loads(sys.argv[1])
init_s, blocks = float(sys.argv[2]), int(sys.argv[3])
bound = b.get("pipeline_bound_bytes_per_sec") or b.get("stage_bound_bytes_per_sec")
live_rate = blocks * 65536 / init_s
if bound:
    print(f"drplane bench stage bound: {bound / 2**20:.0f} MiB/s; the live initial replication "
          f"ran at {live_rate / 2**20:.0f} MiB/s = {100 * live_rate / bound:.0f}% of it")
else:
    print("drplane bench report:", json.dumps(b)[:2000])
PY
