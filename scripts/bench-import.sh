#!/usr/bin/env bash
# Import of a 1 GiB dense raw image into VHDX: `drplane vhdx import` vs
# `qemu-img convert -f raw -O vhdx` (neither flushes to stable storage; outputs removed and the
# page cache synced before every run). Usage: scripts/bench-import.sh [WORKDIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/drplane-bench}
runs=${2:-5}
mkdir -p "$work"
cargo build -q --release -j2
bin=$PWD/target/release/drplane
cd "$work"
[ -f dense.raw ] || head -c 1073741824 /dev/urandom > dense.raw
cat dense.raw > /dev/null
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { rm -f out.vhdx; sync; /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }
q=$(for _ in $(seq "$runs"); do run qemu-img convert -f raw -O vhdx dense.raw out.vhdx; done | median)
o=$(for _ in $(seq "$runs"); do run "$bin" vhdx import dense.raw -o out.vhdx; done | median)
echo "import of a 1 GiB dense raw (median of $runs): qemu-img convert ${q} s, drplane vhdx import ${o} s"
rm -f out.vhdx
