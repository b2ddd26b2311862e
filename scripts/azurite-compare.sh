#!/usr/bin/env bash
# The official JavaScript SDK's page-blob checks (tests/js/sdk_pageblob.cjs, the ones CI runs
# against `drplane blob serve`) run against drplane and against Azurite, side by side, each
# check continuing past failures; prints both scores and the checks each server failed.
# Azurite and the SDK are installed with npm into target/jsenv (once).
# Usage: scripts/azurite-compare.sh [PROFILE]   (standard or premium; Azurite has no profiles)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-standard}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p target/jsenv
cmp -s tests/js/package.json target/jsenv/package.json || cp tests/js/package.json target/jsenv/package.json
[ -d target/jsenv/node_modules/@azure/storage-blob ] || npm install -s --no-audit --no-fund --prefix target/jsenv
[ -x target/jsenv-azurite/node_modules/.bin/azurite-blob ] ||
  npm install -s --no-audit --no-fund --prefix target/jsenv-azurite azurite@3
cargo build -q --bin drplane
export NODE_PATH=$PWD/target/jsenv/node_modules SDK_KEEP_GOING=1

target/debug/drplane blob serve --listen 127.0.0.1:0 --profile "$profile" --data "$work/drplane" > "$work/serve.out" 2>/dev/null &
for _ in $(seq 50); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
drplane=$(sed -n '1s/listening on //p' "$work/serve.out")
target/jsenv-azurite/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort 10998 \
  --location "$work/azurite" --skipApiVersionCheck --disableTelemetry --silent > /dev/null 2>&1 &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/10998) 2>/dev/null && break; sleep 0.1; done
azurite=http://127.0.0.1:10998/devstoreaccount1

for server in drplane azurite; do
  endpoint=${!server}
  node tests/js/sdk_pageblob.cjs "$endpoint" write "$profile" > "$work/$server.json" 2> "$work/$server.log" || true
  score=$(node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1])); console.log(`${r.passed} of ${r.ran}`)' "$work/$server.json" 2>/dev/null || echo "0 of ?")
  echo "$server: $score checks passed"
  grep '^FAILED' "$work/$server.log" | cut -c1-240 | sed 's/^/  /' || true
done
