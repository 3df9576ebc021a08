"""Tables of the held-out runs (eval/heldout_tables.sh): per evaluation set, every
map of the DGE model and of its dense teacher (accuracy / mAP / mIoU), each gating
layer's p_fine and margin, and the best of them beside relevance, GradCAM and
attention GradCAM; written as tables.md and tables.json.

    python eval/heldout_summary.py runs/heldout --out docs/results/heldout
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dge_explain.evaluation.report import gating_layer, method_title, ordered_names  # noqa: E402
from dge_explain.explainers.gating import recommended_layer  # noqa: E402

SETS = {"ecssd-heldout": "ECSSD, odd half (500 images)", "in9-fg": "in9-fg (2025 images)"}
METRICS = ("Accuracy", "mAP", "mIoU")


def cell(scores: dict) -> str:
    return " / ".join(f"{scores[m]:.1f}" for m in METRICS)


def tables(runs: Path) -> tuple[str, dict]:
    lines, data = [], {}
    for name, title in SETS.items():
        dge = json.loads((runs / f"{name}-dge" / "results.json").read_text())
        dense = json.loads((runs / f"{name}-dense" / "results.json").read_text())
        data[name] = {"dge": dge["methods"], "dense": dense["methods"], "images": dge["images"]}
        lines += [f"## {title}", "", "Accuracy / mAP / mIoU (%).", "",
                  "| map | DGE-DeiT-Ti | dense DeiT-Ti |", "|---|---|---|"]
        names = ordered_names(set(dge["methods"]) | set(dense["methods"]))
        for map_name in names:
            if gating_layer(map_name):
                continue
            a, b = dge["methods"].get(map_name), dense["methods"].get(map_name)
            lines.append(f"| {method_title(map_name)} | {cell(a) if a else ''} | {cell(b) if b else ''} |")
        layers = sorted({gating_layer(n)[0] for n in dge["methods"] if gating_layer(n)})
        default = recommended_layer(len(layers))
        lines += ["", f"Gating maps of the DGE model, per layer (the default map, plain `gating`: layer {default}, "
                      "p_fine, chosen on the development set):", "", "| layer | p_fine | margin |", "|---|---|---|"]
        for layer in layers:
            fine, margin = dge["methods"].get(f"layer{layer}"), dge["methods"].get(f"layer{layer}-margin")
            mark = " (default)" if layer == default else ""
            lines.append(f"| {layer}{mark} | {cell(fine) if fine else ''} | {cell(margin) if margin else ''} |")
        lines.append("")
    return "\n".join(lines), data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    text, data = tables(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tables.md").write_text(text)
    (args.out / "tables.json").write_text(json.dumps(data, indent=2))
    for name in SETS:   # the runs' own results, beside the tables
        for model in ("dge", "dense"):
            for file in ("results.json", "results.md", "run.json"):
                target = args.out / f"{name}-{model}" / file
                target.parent.mkdir(exist_ok=True)
                shutil.copy(args.runs / f"{name}-{model}" / file, target)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
