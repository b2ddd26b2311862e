#!/usr/bin/env bash
# Upload throughput over loopback: `drplane blob serve` vs Azurite (when `npm install azurite`
# has been run in AZURITE_DIR), each with our client (`drplane blob upload`) and the official
# Python SDK, 4 upload threads, 4 MiB pages, random data. Prints MiB/s per pair.
# Usage: scripts/bench-blob-upload.sh [SIZE_MIB] [AZURITE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
azdir=${2:-/tmp/azurite}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q
bin=$PWD/target/release/drplane
py=$PWD/target/pyenv/bin/python
[ -x "$py" ] || { python3 -m venv target/pyenv && target/pyenv/bin/pip install -q azure-storage-blob; }
head -c "${size}M" /dev/urandom > "$work/data.raw"

measure() { # name endpoint
  local name=$1 ep=$2 ours sdk
  # One unmeasured pass first: on a VM, memory the guest never touched costs a host fault per
  # page, which would measure the hypervisor rather than the server.
  "$bin" blob upload "$work/data.raw" --store "$ep" --container bench --name ours.bin --threads 4 >/dev/null 2>&1
  "$py" tests/python/sdk_upload.py "$ep" "$work/data.raw" 4 >/dev/null
  ours=$("$bin" blob upload "$work/data.raw" --store "$ep" --container bench --name ours.bin --threads 4 2>&1 | sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p')
  sdk=$("$py" tests/python/sdk_upload.py "$ep" "$work/data.raw" 4)
  printf '%-8s drplane client %8s MiB/s   python sdk %8s MiB/s\n' "$name" "$ours" "$sdk"
}

"$bin" blob serve --listen 127.0.0.1:0 --data "$work/store" > "$work/serve.out" 2>/dev/null &
for _ in $(seq 50); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
ep=$(sed 's/listening on //' "$work/serve.out")
measure drplane "$ep"

if [ -x "$azdir/node_modules/.bin/azurite-blob" ]; then
  "$azdir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 10999 --location "$work/azurite" \
    --skipApiVersionCheck --disableTelemetry --silent > /dev/null 2>&1 &
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/10999) 2>/dev/null && break; sleep 0.1; done
  measure azurite "http://127.0.0.1:10999/devstoreaccount1"
else
  echo "azurite: not installed in $azdir (npm install azurite there to compare)"
fi
