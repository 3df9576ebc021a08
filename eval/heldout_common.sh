# Shared by eval/heldout_tables.sh, eval/heldout_scorecam.sh and eval/heldout_perturb.sh (sourced
# from the repository root): the data home, the shipped DGE model and its dense teacher, the
# held-out segmentation sets (name=dataset spec), `run`, which logs each dge-explain call and its
# wall time, and `publish`, which copies each run's results into docs/results.
export DGE_EXPLAIN_HOME="${DGE_EXPLAIN_HOME:-$(cd .. && pwd)/shared}"
H="$DGE_EXPLAIN_HOME"
DGE=(--model deit_dge_s12_tiny_patch16_224.distilled)
DENSE=(--model deit_tiny_patch16_224 --checkpoint "$H/weights/deit_tiny_patch16_224.safetensors")
HELDOUT_SETS=("ecssd-heldout=ecssd:$H/data/ecssd:odd" "in9-fg=masks:$H/data/in9-fg/images,$H/data/in9-fg/masks")
run() { echo "+ dge-explain $*" >&2; /usr/bin/time -f "%e s" .venv/bin/dge-explain "$@"; }
publish() {   # publish runs/X docs/results/X: every run folder's results.{json,md} and run.json
  for folder in "$1"/*/; do
    mkdir -p "$2/$(basename "$folder")"
    cp "$folder"/results.{json,md} "$folder"/run.json "$2/$(basename "$folder")/"
  done
}
