#!/usr/bin/env bash
# The perturbation and router tests (docs/league.md) for the shipped routers on images no router
# was trained on: imagenet-sample's odd half (the routers saw its even half and ECSSD's even half).
# The league's maps that lead its faithfulness tables, the random floor and the recommended gating
# map, for the shipped DGE-DeiT-Tiny and its dense teacher (the DGE model's preprocessing); and, for
# the DGE model's router test, ToMe's and EViT's compute allocation at EViT's fusing blocks (from
# its dense twin). Resumable. Into runs/heldout-perturb/, the results into docs/results/heldout-perturb/.
set -euo pipefail
cd "$(dirname "$0")/.."
source eval/heldout_common.sh
IMAGES="$H/data/imagenet-sample:odd"
MAPS=(random attention rollout attention-gradcam relevance gradcam)

run perturb "${DGE[@]}" --images "$IMAGES" --methods "${MAPS[@]}" gating --out runs/heldout-perturb/dge "$@"
run perturb "${DENSE[@]}" --crop-pct 0.875 --images "$IMAGES" --methods "${MAPS[@]}" \
    --out runs/heldout-perturb/dense "$@"
run perturb "${DGE[@]}" --images "$IMAGES" --methods tome-size:4,7,10 evit-kept \
    --out runs/heldout-perturb/dge-peers "$@"
publish runs/heldout-perturb docs/results/heldout-perturb
