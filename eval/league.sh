#!/usr/bin/env bash
# The README's explainer league: segmentation on all 1000 ECSSD images and
# perturbation on the labelled ImageNet images, for the shipped DGE-DeiT-Tiny
# (every baseline, gating layers 1, 4, 8, 12, random) and its dense teacher
# (every baseline, random).  ScoreCAM (one forward pass per channel of its target
# layer: 192 per image) runs on the first SCORECAM_IMAGES images only.
# PERTURB_IMAGES limits the perturbation runs (default all 1000).  LEAGUE_PARTS
# picks "ecssd", "perturb" or both (default).  Resumable: rerun to continue.
# Extra arguments go to every dge-explain call (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
export DGE_EXPLAIN_HOME="${DGE_EXPLAIN_HOME:-$(cd .. && pwd)/shared}"
SCORECAM_IMAGES="${SCORECAM_IMAGES:-100}"
PERTURB_IMAGES="${PERTURB_IMAGES:-1000}"
LEAGUE_PARTS="${LEAGUE_PARTS:-ecssd perturb}"
# every explainer of the registry but the gating maps and ScoreCAM (run on fewer images below)
BASELINES="$(.venv/bin/dge-explain methods --names --baselines --exclude scorecam tome-size evit-kept)"
DGE=(--model deit_dge_s12_tiny_patch16_224.distilled)
# the teacher, with the shipped model's preprocessing (timm's config for it says crop 0.9)
DENSE=(--model deit_tiny_patch16_224 --checkpoint "$DGE_EXPLAIN_HOME/weights/deit_tiny_patch16_224.safetensors"
       --crop-pct 0.875)
ECSSD="ecssd:$DGE_EXPLAIN_HOME/data/ecssd"
run() { echo "+ dge-explain $*" >&2; /usr/bin/time -f "%e s" .venv/bin/dge-explain "$@"; }

case " $LEAGUE_PARTS " in *" ecssd "*)
run evaluate "${DGE[@]}" --dataset "$ECSSD" --methods $BASELINES gating:1,4,8,12 --out runs/league-ecssd-dge "$@"
run evaluate "${DENSE[@]:0:4}" --dataset "$ECSSD" --methods $BASELINES --out runs/league-ecssd-dense "$@"
run evaluate "${DGE[@]}" --dataset "$ECSSD" --methods scorecam --limit "$SCORECAM_IMAGES" \
    --out runs/league-ecssd-dge-scorecam "$@"
run evaluate "${DENSE[@]:0:4}" --dataset "$ECSSD" --methods scorecam --limit "$SCORECAM_IMAGES" \
    --out runs/league-ecssd-dense-scorecam "$@"
;; esac
case " $LEAGUE_PARTS " in *" perturb "*)
run perturb "${DGE[@]}" --methods $BASELINES gating:1,4,8,12 --limit "$PERTURB_IMAGES" \
    --out runs/league-perturb-dge "$@"
run perturb "${DENSE[@]}" --methods $BASELINES --limit "$PERTURB_IMAGES" --out runs/league-perturb-dense "$@"
run perturb "${DGE[@]}" --methods scorecam --limit "$SCORECAM_IMAGES" --out runs/league-perturb-dge-scorecam "$@"
run perturb "${DENSE[@]}" --methods scorecam --limit "$SCORECAM_IMAGES" --out runs/league-perturb-dense-scorecam "$@"
;; esac
