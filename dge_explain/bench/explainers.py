"""Explainer cost: the time of each explainer's maps for one batch against the
model's own forward and forward + backward on the same batch.  Goal: every
attention-based explainer costs at most one forward + backward (ratio <= 1).

Calls are interleaved (bench.timing), so a drifting machine hits an explainer and
its references alike.

    python -m dge_explain.bench.explainers [--models deit_dge_s12_tiny_patch16_224.distilled dense] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import DataLoader, Subset

from dge_explain import paths
from dge_explain.api import load_model
from dge_explain.zoo import DEFAULT_MODEL
from dge_explain.zoo.build import dense_teacher
from dge_explain.bench.timing import measure_interleaved
from dge_explain.data import Preprocessing, segmentation_dataset
from dge_explain.explainers import batch_maps, build_explainers
from dge_explain.console import format_table

ATTENTION_EXPLAINERS = ("attention", "rollout", "attention-gradcam", "relevance")
DEFAULT_METHODS = (*ATTENTION_EXPLAINERS, " ".join(ATTENTION_EXPLAINERS), "gradcam",
                   "gating:1,4,8,12")


def _forward(model, images):
    with torch.no_grad():
        model(images)


def _forward_backward(model, images):
    logits = model(images)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    model.zero_grad(set_to_none=True)


def _model(name: str, shipped: str):
    """`dense` stands for the shipped DGE model's dense teacher."""
    return dense_teacher(shipped) if name == "dense" else load_model(name)


def explainer_costs(model, images: torch.Tensor, keys, methods, min_time: float = 20.0) -> dict:
    """{entry: Timing or the reason it cannot run} for the forward, the forward +
    backward and each entry of `methods` (an entry with spaces: those methods together)."""
    candidates = {"forward": lambda: _forward(model, images),
                  "forward + backward": lambda: _forward_backward(model, images)}
    refused = {}
    for entry in methods:
        try:
            explainers = build_explainers(model, entry.split())
        except ValueError as error:  # e.g. gating maps of a dense model
            refused[entry] = str(error)
            continue
        candidates[entry] = lambda explainers=explainers: batch_maps(explainers, images, keys)
    return {**measure_interleaved(candidates, min_time=min_time, warmup=1, min_repeats=5), **refused}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL, "dense"],
                        help="model names; `dense` is the shipped model's dense teacher")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="one entry per timed call; an entry with spaces times those methods together")
    parser.add_argument("--dataset", default=None, help="default ecssd:$DGE_EXPLAIN_HOME/data/ecssd")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-time", type=float, default=20.0, help="seconds of timing per model")
    args = parser.parse_args(argv)
    dataset = paths.expand(args.dataset) if args.dataset else f"ecssd:{paths.home() / 'data' / 'ecssd'}"
    rows = []
    for name in args.models:
        model = _model(name, DEFAULT_MODEL)
        data = segmentation_dataset(dataset, Preprocessing.of(model).for_segmentation())
        batch = next(iter(DataLoader(Subset(data, range(args.batch_size)), batch_size=args.batch_size)))
        costs = explainer_costs(model, batch["image"], batch["key"], args.methods, args.min_time)
        forward, both = costs["forward"].median, costs["forward + backward"].median
        for entry, cost in costs.items():
            rows.append([name, entry, f"not run: {cost}", "", ""] if isinstance(cost, str) else
                        [name, entry, cost.ms(), f"{cost.median / forward:.2f}", f"{cost.median / both:.2f}"])
    print(f"batch {args.batch_size} of {dataset}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; per call: median ± half the interquartile range")
    print(format_table(["model", "maps", "time per batch", "/ forward", "/ (forward + backward)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
