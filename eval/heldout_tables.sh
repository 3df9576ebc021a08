#!/usr/bin/env bash
# The held-out tables (docs/heldout.md): the shipped DGE-DeiT-Tiny and its dense teacher
# scored on images that no router trained on and no choice was made on
# (dge_explain/training/splits.py): ECSSD's odd half and in9-fg. Every baseline of the
# league beside the DGE model's gating maps (the recommended one, and p_fine and margin
# of every layer); the dense teacher with ToMe's and EViT's allocation maps too.
# Resumable: rerun to continue. Extra arguments go to every dge-explain call.
set -euo pipefail
cd "$(dirname "$0")/.."
source eval/heldout_common.sh
BASELINES="$(.venv/bin/dge-explain methods --names --baselines --exclude scorecam tome-size evit-kept)"
LAYERS=1,2,3,4,5,6,7,8,9,10,11,12

for pair in "${HELDOUT_SETS[@]}"; do
  name="${pair%%=*}"
  spec="${pair#*=}"
  run evaluate "${DGE[@]}" --dataset "$spec" --methods $BASELINES gating "gating:$LAYERS" "gating-margin:$LAYERS" \
      --out "runs/heldout/$name-dge" "$@"
  run evaluate "${DENSE[@]}" --dataset "$spec" --methods $BASELINES tome-size evit-kept \
      --out "runs/heldout/$name-dense" "$@"
done
.venv/bin/python eval/heldout_summary.py runs/heldout --out docs/results/heldout
