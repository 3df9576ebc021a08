#!/usr/bin/env bash
# The README's Tables 7-8 section: the PVT-S/M backbones dense vs DGE (budget 0.5) at
# the detection (800x1333) and segmentation (512x512, 512x683) input sizes, and the
# whole Mask R-CNN + FPN at 800x1333, on this machine's CPU (2 threads), into runs/tables78.
set -euo pipefail
cd "$(dirname "$0")/.."
export DGE_EXPLAIN_HOME="${DGE_EXPLAIN_HOME:-$(cd .. && pwd)/shared}"
mkdir -p runs/tables78
.venv/bin/dge-explain bench --preset maskrcnn --threads 2 --min-time 20 --json runs/tables78/maskrcnn.json
.venv/bin/dge-explain bench --preset semfpn --threads 2 --min-time 10 --json runs/tables78/semfpn.json
.venv/bin/python -m dge_explain.bench.detector --threads 2 --min-time 20 --json runs/tables78/detector.json
