"""Complexity ratio against top-1 for a few budgets gamma: distil DeiT-Tiny
DGE (phi = {1, 2}) with the default recipe but fewer epochs for each gamma, then
classify the held-out half of imagenet-sample (trained on ECSSD and the other
half).  Resumable: finished runs are reused.

    DGE_EXPLAIN_HOME=../shared .venv/bin/python eval/gamma_sweep.py [--epochs 6] [--gammas 0.4 0.5 0.6 0.7]

Writes runs/gamma-sweep/summary.{json,md,png,pdf}.
"""
import argparse
import json
import sys
from pathlib import Path

from dge_explain import paths
from dge_explain.zoo import DEFAULT_MODEL
from dge_explain.zoo.build import build_shipped, dense_teacher
from dge_explain.evaluation.classification import evaluate_classification
from dge_explain.viz.figures import budget_figure, save
from dge_explain.training.distill import TrainConfig, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="runs/gamma-sweep")
    parser.add_argument("--dpi", type=int, default=150)
    args = parser.parse_args(argv)
    out = Path(args.out)
    held_out = str(paths.home() / "data" / "imagenet-sample") + ":odd"
    rows = []
    for gamma in args.gammas:
        run = out / f"gamma-{gamma}"
        result_file = run / "heldout.json"
        if not result_file.exists():
            if not (run / "trained.safetensors").exists():
                # the shipped model's recipe: DeiT's evaluation crop, not timm's 0.9 for this teacher
                train(TrainConfig(out=str(run), gamma=gamma, epochs=args.epochs, crop_pct=0.875), resume=True)
            model = build_shipped(DEFAULT_MODEL, trained=str(run / "trained.safetensors"))
            dense = None if rows else dense_teacher(DEFAULT_MODEL)
            result = evaluate_classification(model, held_out, dense)
            result_file.write_text(json.dumps(result.to_dict(), indent=2))
        rows.append((gamma, json.loads(result_file.read_text())))
    dense = next((r for _, r in rows if r["dense_top1"] is not None), None)
    lines = ["| gamma | complexity ratio | top-1 | top-5 |", "|---|---|---|---|"]
    if dense:
        lines.append(f"| dense teacher | 1.000 | {100 * dense['dense_top1']:.1f} | {100 * dense['dense_top5']:.1f} |")
    lines += [f"| {g} | {r['ratio']:.3f} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f} |" for g, r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({str(g): r for g, r in rows}, indent=2))
    figure = budget_figure({f"γ {g}": r for g, r in rows}, dense["dense_top1"] if dense else None)
    save(figure, out / "summary", dpi=args.dpi)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
