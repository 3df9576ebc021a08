"""The router sweep of the held-out protocol (dge_explain/training/splits.py): distil
DGE-DeiT-Tiny routers with the plain recipe and with the teacher's maps as an
auxiliary target, then measure each on data no router trained on and no choice
is made on, except the development set that the choices are made on:

* top-1 and complexity ratio on imagenet-sample's odd half (`dge-explain classify`);
* the gating maps of every layer (p_fine and margin) and the model's own relevance,
  GradCAM and attention GradCAM on ECSSD's even half, the development set
  (`dge-explain evaluate`).

Every step is a dge-explain command, printed before it runs, and resumable: a
rerun skips finished steps (a finished evaluation too, whichever version made
it).  Writes runs/heldout-sweep/<config>/ and the summary
docs/results/heldout-sweep/summary.{json,md}.

    python eval/heldout_sweep.py [--configs plain relevance-1 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(ROOT / ".venv" / "bin" / "dge-explain")]
MODEL = "deit_dge_s12_tiny_patch16_224.distilled"
# every run: the shipped recipe (docs/models.md), 12 epochs of the 1000 training images
# (372 steps), DeiT's 0.875 crop, as the shipped model is measured with
RECIPE = ["--epochs", "12", "--crop-pct", "0.875"]
# name -> extra `dge-explain train` arguments
CONFIGS = {
    "plain": [],
    "relevance-1": ["--map-target", "relevance", "--map-weight", "1"],
    "relevance-4": ["--map-target", "relevance", "--map-weight", "4"],
    "rollout-1": ["--map-target", "rollout", "--map-weight", "1"],
    # only the layers whose maps are read (the recommended layer 9 and its neighbours), at a
    # weight that leaves the budget term in charge of the other layers
    "relevance-0.25-late": ["--map-target", "relevance", "--map-weight", "0.25", "--map-layers", "8", "9", "10"],
}
LAYERS = ",".join(str(layer) for layer in range(1, 13))
BASELINES = ["relevance", "gradcam", "attention-gradcam"]


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def sweep_one(name: str, extra: list[str], out: Path, home: str) -> dict:
    folder = out / name
    trained = folder / "train" / "trained.safetensors"
    if not trained.exists():
        resume = ["--resume"] if (folder / "train" / "checkpoint.pt").exists() else []
        run(CLI + ["train", "--out", str(folder / "train"), *RECIPE, *extra, *resume])
    model = ["--model", MODEL, "--trained", str(trained)]
    classified = folder / "classify.json"
    if not classified.exists():
        run(CLI + ["classify", *model, "--images", f"{home}/data/imagenet-sample:odd", "--out", str(classified)])
    if not (folder / "ecssd-dev" / "results.json").exists():
        run(CLI + ["evaluate", *model, "--dataset", f"ecssd:{home}/data/ecssd:even", "--methods",
                   f"gating:{LAYERS}", f"gating-margin:{LAYERS}", *BASELINES, "--out", str(folder / "ecssd-dev")])
    classification = json.loads(classified.read_text())
    segmentation = json.loads((folder / "ecssd-dev" / "results.json").read_text())["methods"]
    return {"train": extra, "top1": classification["top1"], "dense_top1": classification["dense_top1"],
            "complexity_ratio": classification["ratio"],
            "ecssd_dev": {k: {m: v[m] for m in ("Accuracy", "mAP", "mIoU")} for k, v in segmentation.items()}}


def markdown(summary: dict) -> str:
    lines = ["| config | top-1 (teacher) | ratio | best gating map on dev (Acc / mAP / mIoU) | relevance | GradCAM |",
             "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        maps = {k: v for k, v in row["ecssd_dev"].items() if k.startswith("layer")}
        best = max(maps, key=lambda k: maps[k]["mAP"] + maps[k]["mIoU"])
        cell = lambda v: f"{v['Accuracy']:.1f} / {v['mAP']:.1f} / {v['mIoU']:.1f}"
        teacher = f" ({100 * row['dense_top1']:.1f})" if row["dense_top1"] is not None else ""
        lines.append(f"| {name} | {100 * row['top1']:.1f}{teacher} | {row['complexity_ratio']:.3f} | {best}: "
                     f"{cell(maps[best])} | {cell(row['ecssd_dev']['relevance'])} | {cell(row['ecssd_dev']['gradcam'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "heldout-sweep"))
    args = parser.parse_args(argv)
    home = os.environ.get("DGE_EXPLAIN_HOME") or str((ROOT.parent / "shared").resolve())
    os.environ["DGE_EXPLAIN_HOME"] = home
    summary = {name: sweep_one(name, CONFIGS[name], Path(args.out), home) for name in args.configs}
    results = ROOT / "docs" / "results" / "heldout-sweep"
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    (results / "summary.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
