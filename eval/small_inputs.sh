#!/usr/bin/env bash
# Issue 27's measurements (docs/benchmarks.md, "Small inputs"): on this machine's CPU,
# 2 threads, one process per command, nothing else running. The shipped DGE-DeiT-Tiny with
# its trained gates (timed on held-out photos) and forced gates at budget 0.5 for DeiT-Ti
# and DeiT-S, at 224 and 448 px, batch 1 and 16; the Mask R-CNN input size with ragged
# borders; the profiles of the 224-px and 448-px forwards. Into runs/small-inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DGE_EXPLAIN_HOME="${DGE_EXPLAIN_HOME:-$(cd .. && pwd)/shared}"
OUT=runs/small-inputs
mkdir -p "$OUT"
.venv/bin/dge-explain bench --models deit_tiny --gates trained --resolutions 224 448 --batch-sizes 1 16 \
    --threads 2 --json "$OUT/trained.json"
.venv/bin/dge-explain bench --models deit_tiny deit_small --resolutions 224 448 --batch-sizes 1 16 --ratio 0.5 \
    --threads 2 --json "$OUT/forced.json"
.venv/bin/dge-explain bench --preset maskrcnn --models pvt_small pvt_medium --threads 2 --min-time 20 \
    --json "$OUT/maskrcnn.json"
.venv/bin/python -m dge_explain.bench.profile --models deit_tiny deit_small --threads 2 --out "$OUT/profile"
.venv/bin/python -m dge_explain.bench.profile --models deit_tiny deit_small --gates trained forced --resolution 448 \
    --threads 2 --min-time 10 --out "$OUT/profile-448"
