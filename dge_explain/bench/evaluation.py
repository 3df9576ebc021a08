"""Evaluation speed: the time of `dge-explain evaluate` (maps, scoring, records)
over the same images as the bare model's forward pass, and with GradCAM, as the
model's forward + backward.  Goals: gating + random <= 1.25x forward; with
GradCAM <= 1.3x forward + backward.

The four runs are repeated in rounds, each round running them back to back, so
that a machine whose speed drifts hits a run and its reference alike; a ratio is
taken within each round, and the table gives the median over rounds with the
range.

    python -m dge_explain.bench.evaluation --limit 200 --rounds 3 [--model deit_dge_s12_tiny_patch16_224.distilled]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Subset

from dge_explain import paths
from dge_explain.api import load_model
from dge_explain.zoo import DEFAULT_MODEL
from dge_explain.data import Preprocessing, segmentation_dataset
from dge_explain.evaluation.segmentation import evaluate
from dge_explain.explainers import build_explainers
from dge_explain.console import format_table


def _loop_seconds(model, loader, backward: bool) -> float:
    start = time.perf_counter()
    for batch in loader:
        images = batch["image"]
        if backward:
            logits = model(images)
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        else:
            with torch.no_grad():
                model(images)
    return time.perf_counter() - start


def _evaluate_seconds(model, dataset: str, methods: list[str], args) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        evaluate(model, dataset, build_explainers(model, methods), out, limit=args.limit,
                 batch_size=args.batch_size, workers=args.workers, progress=False)
        return time.perf_counter() - start


def _cell(values: list[float], unit: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.2f}{unit}"
    return f"{middle:.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dataset", default=None, help="default ecssd:$DGE_EXPLAIN_HOME/data/ecssd")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layers", default="1,4,8,12")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    dataset = paths.expand(args.dataset) if args.dataset else f"ecssd:{paths.home() / 'data' / 'ecssd'}"
    model = load_model(args.model)
    data = segmentation_dataset(dataset, Preprocessing.of(model).for_segmentation())
    loader = DataLoader(Subset(data, range(min(args.limit, len(data)))), batch_size=args.batch_size,
                        num_workers=args.workers)
    _loop_seconds(model, [next(iter(loader))], backward=True)  # warm-up
    gating = ["random", f"gating:{args.layers}"]
    pairs = [("gating + random", "forward", False, gating),
             ("gating + random + GradCAM", "forward + backward", True, ["gradcam", *gating])]
    seconds = {name: [] for pair in pairs for name in pair[:2]}
    ratios = {pair[0]: [] for pair in pairs}
    for _ in range(args.rounds):
        for name, reference, backward, methods in pairs:
            seconds[reference].append(_loop_seconds(model, loader, backward))
            seconds[name].append(_evaluate_seconds(model, dataset, methods, args))
            ratios[name].append(seconds[name][-1] / seconds[reference][-1])
    rows = []
    for name, reference, _, _ in pairs:
        rows.append([reference, _cell(seconds[reference], " s"), ""])
        rows.append([name, _cell(seconds[name], " s"), _cell(ratios[name], "x")])
    print(f"{args.model}, {args.limit} images of {dataset}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.rounds} rounds "
          "(median, range)")
    print(format_table(["run", "time", "vs model pass"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
