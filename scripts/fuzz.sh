#!/usr/bin/env bash
# Run every cargo-fuzz target for N seconds (default 60), seeded from the test image builder.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(open_image log_replay metadata parent_locator slot_record manifest tracking_bitmap staging_log nbd_replies blob_requests store_log page_list blob_list scenario plan_input)
cargo run -q --example write_fuzz_seeds -- fuzz/corpus
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "== $t for ${secs}s"
  # Images are a few MiB; the decoders' inputs are small.
  max_len=65536
  [ "$t" = open_image ] && max_len=$((6 * 1024 * 1024))
  [ "$t" = log_replay ] && max_len=$((1024 * 1024 + 4096))
  (cd fuzz && cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len="$max_len" \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1) | grep -E "^#|stat::|ERROR|SUMMARY|Done" | tail -n 8
done
