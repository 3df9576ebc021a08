#!/usr/bin/env bash
# ScoreCAM on the held-out sets (docs/heldout.md): one forward pass per channel of its layer
# (192 per image), too slow for the 2525-image tables of eval/heldout_tables.sh, so the first
# 100 images of each set, beside relevance and the recommended gating map on the same images;
# the shipped DGE-DeiT-Tiny and its dense teacher. Resumable. Into runs/heldout-scorecam/,
# the results into docs/results/heldout-scorecam/.
set -euo pipefail
cd "$(dirname "$0")/.."
source eval/heldout_common.sh
IMAGES=100

for pair in "${HELDOUT_SETS[@]}"; do
  name="${pair%%=*}"
  spec="${pair#*=}"
  run evaluate "${DGE[@]}" --dataset "$spec" --methods scorecam relevance gating --limit "$IMAGES" \
      --out "runs/heldout-scorecam/$name-dge" "$@"
  run evaluate "${DENSE[@]}" --dataset "$spec" --methods scorecam relevance --limit "$IMAGES" \
      --out "runs/heldout-scorecam/$name-dense" "$@"
done
publish runs/heldout-scorecam docs/results/heldout-scorecam
