#!/usr/bin/env bash
# Upload throughput over loopback: `drplane blob serve` vs Azurite (when `npm install azurite`
# has been run in AZURITE_DIR), each with our client (`drplane blob upload`) and the official
# Python SDK, 4 upload threads, 4 MiB pages, 1 GiB of random data by default.
# Both servers run side by side and every round measures the four pairs one after the other, so
# a slow minute on the VM lands on all of them; each pair's median over RUNS rounds is printed,
# with the ratios. Before every measured upload the previous one's dirty pages are written back
# (`sync`), so no upload pays for another's.
# Usage: scripts/bench-blob-upload.sh [SIZE_MIB] [AZURITE_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
azdir=${2:-/tmp/azurite}
runs=${3:-5}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q
bin=$PWD/target/release/drplane
py=$PWD/target/pyenv/bin/python
[ -x "$py" ] || { python3 -m venv target/pyenv && target/pyenv/bin/pip install -q azure-storage-blob; }
head -c "${size}M" /dev/urandom > "$work/data.raw"

ours() { "$bin" blob upload "$work/data.raw" --store "$1" --container bench --name ours.bin --threads 4 2>&1 | sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p'; }
sdk() { "$py" tests/python/sdk_upload.py "$1" "$work/data.raw" 4; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Our server at `process` durability, as the documented figures were measured
# (DURABILITY=power measures the default).
"$bin" blob serve --listen 127.0.0.1:0 --data "$work/store" --durability "${DURABILITY:-process}" > "$work/serve.out" 2>/dev/null &
for _ in $(seq 50); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
endpoints=("drplane=$(sed 's/listening on //' "$work/serve.out")")
if [ -x "$azdir/node_modules/.bin/azurite-blob" ]; then
  "$azdir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 10999 --location "$work/azurite" \
    --skipApiVersionCheck --disableTelemetry --silent > /dev/null 2>&1 &
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/10999) 2>/dev/null && break; sleep 0.1; done
  endpoints+=("azurite=http://127.0.0.1:10999/devstoreaccount1")
else
  echo "azurite: not installed in $azdir (npm install azurite there to compare)"
fi

# Two unmeasured rounds: on a VM, memory the guest never touched costs a host fault per page,
# which would measure the hypervisor rather than the server.
for _ in 1 2; do
  for e in "${endpoints[@]}"; do ours "${e#*=}" >/dev/null; sdk "${e#*=}" >/dev/null; done
done
for _ in $(seq "$runs"); do
  for e in "${endpoints[@]}"; do
    sync; echo "${e%%=*} ours $(ours "${e#*=}")" >> "$work/results"
    sync; echo "${e%%=*} sdk $(sdk "${e#*=}")" >> "$work/results"
  done
done
pick() { awk -v s="$1" -v c="$2" '$1 == s && $2 == c {print $3}' "$work/results" | median; }
for e in "${endpoints[@]}"; do
  s=${e%%=*}
  printf '%-8s drplane client %8s MiB/s   python sdk %8s MiB/s   (medians of %s; all: %s | %s)\n' \
    "$s" "$(pick "$s" ours)" "$(pick "$s" sdk)" "$runs" \
    "$(awk -v s="$s" '$1 == s && $2 == "ours" {printf "%s ", $3}' "$work/results")" \
    "$(awk -v s="$s" '$1 == s && $2 == "sdk" {printf "%s ", $3}' "$work/results")"
done
if [ "${#endpoints[@]}" -gt 1 ]; then
  echo "drplane blob serve / azurite: $(echo "$(pick drplane ours) / $(pick azurite ours)" | bc -l | cut -c1-4)x with our client, $(echo "$(pick drplane sdk) / $(pick azurite sdk)" | bc -l | cut -c1-4)x with the python sdk"
fi
