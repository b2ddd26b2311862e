#!/usr/bin/env bash
# Time `drplane vhdx export` against `qemu-img convert -f vhdx -O raw` on the same 1 GiB dense
# (random-data) dynamic VHDX, alternating the tools, removing outputs before every run, and
# reporting each tool's median over RUNS (default 7) plus the ratio.
# Usage: scripts/bench-export.sh [WORKDIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/drplane-bench-export}
runs=${2:-7}
mkdir -p "$work"
cargo build --release -q
bin=$PWD/target/release/drplane
img=$work/dense-1g.vhdx
if [ ! -f "$img" ]; then
  head -c 1G /dev/urandom > "$work/src.raw"
  qemu-img convert -f raw -O vhdx "$work/src.raw" "$img"
  rm -f "$work/src.raw"
fi
time_one() { # prints seconds
  local start end
  start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N)
  awk "BEGIN { print $end - $start }"
}
ours=(); qemu=()
run_qemu() { qemu+=("$(time_one qemu-img convert -f vhdx -O raw "$img" "$work/qemu.raw")"); }
run_ours() { ours+=("$(time_one "$bin" vhdx export ${EXPORT_ARGS:-} "$img" -o "$work/ours.raw")"); }
# On this VM the tool that runs second after a sync is often much slower (measured in both
# orders), so the order alternates: qemu first on odd runs, drplane first on even ones.
for i in $(seq "$runs"); do
  rm -f "$work/ours.raw" "$work/qemu.raw"; sync
  if [ $((i % 2)) -eq 1 ]; then run_qemu; sync; run_ours; else run_ours; sync; run_qemu; fi
done
cmp "$work/ours.raw" "$work/qemu.raw"
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${ours[@]}"); mq=$(median "${qemu[@]}")
echo "runs: $runs (outputs removed and caches synced before each run)"
echo "qemu-img convert: ${qemu[*]}"
echo "drplane export:   ${ours[*]}"
printf 'median qemu-img %.3f s, drplane %.3f s, drplane/qemu = %.2f (target <= 0.50)\n' "$mq" "$mo" "$(awk "BEGIN { print $mo / $mq }")"
