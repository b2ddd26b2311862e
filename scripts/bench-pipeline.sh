#!/usr/bin/env bash
# The block pipeline against its bound (the target: the pipeline at >= 90% of the bound set
# by its slowest stages): runs the criterion bench `pipeline` (64 KiB blocks; text-like, half zero,
# random) and prints, per data kind, the single-core bound (the stages' times added up), the
# pipeline on one core against it, and the pipeline on all cores against cores x that bound.
# Usage: scripts/bench-pipeline.sh [criterion args, e.g. --measurement-time 3]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench -q -j2 --bench pipeline -- "$@" > "$out" 2>&1 || { cat "$out"; exit 1; }
python3 - "$out" "$(nproc)" <<'PY'
import re, sys
text, cores = open(sys.argv[1]).read().splitlines(), int(sys.argv[2])
scale = {"GiB/s": 1024.0, "MiB/s": 1.0, "KiB/s": 1 / 1024}
found, name = {}, None
for line in text:
    m = re.match(r"^(pipeline_64KiB_blocks/\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"thrpt:\s+\[\s*\S+ \S+\s+(\S+) (\S+)\s+\S+ \S+\]", line)
    if m and name and name not in found:
        found[name] = float(m.group(1)) * scale[m.group(2)]
stages = ["blake3_keyed", "zero_check", "zstd_1", "aes_256_gcm", "crc32c"]
for kind in ["text_like", "half_zero", "random"]:
    g = {k.split("/")[2]: v for k, v in found.items() if k.split("/")[1] == kind}
    bound = 1 / sum(1 / g["stage_" + s] for s in stages)
    one, many = g["pipeline_encode"], g["pipeline_encode_parallel_all_cores"]
    slowest = min(stages, key=lambda s: g["stage_" + s])
    print(f"{kind:10} bound {bound:7.0f} MiB/s (slowest: {slowest} {g['stage_' + slowest]:.0f} MiB/s)"
          f"  1 core {one:7.0f} MiB/s = {100 * one / bound:5.1f}%"
          f"  {cores} cores {many:7.0f} MiB/s = {100 * many / (cores * bound):5.1f}% of {cores} x bound")
PY
