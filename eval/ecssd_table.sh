#!/usr/bin/env bash
# Reproduces the README's gating-score tables: the shipped DGE-DeiT-Tiny on all
# 1000 ECSSD images (random, GradCAM, gating layers 1, 4, 8, 12 with the fine and
# margin scores, layer 8 with the density score).
# Extra arguments go to `dge-explain evaluate` (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
export DGE_EXPLAIN_HOME="${DGE_EXPLAIN_HOME:-$(cd .. && pwd)/shared}"
.venv/bin/dge-explain evaluate --model deit_dge_s12_tiny_patch16_224.distilled --dataset "ecssd:$DGE_EXPLAIN_HOME/data/ecssd" \
    --methods random gradcam gating:1,4,8,12 gating-margin:1,4,8,12 gating-density:8 --out runs/ecssd-full "$@"
