"""Evaluation speed: the time of `dge-explain evaluate` (maps, scoring, records)
over the same images as the bare model's forward pass, and with GradCAM, as the
model's forward + backward.  Goals: gating + random <= 1.5x forward; with
GradCAM <= 1.5x forward + backward.

    python -m dge_explain.bench.evaluation --limit 200 [--model deit_tiny_dge_s12]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Subset

from dge_explain import paths, zoo
from dge_explain.tables import format_table
from dge_explain.data import segmentation_dataset
from dge_explain.evaluate import evaluate


def _loop_seconds(model, loader, backward: bool) -> float:
    start = time.perf_counter()
    for images, *_ in loader:
        if backward:
            logits = model(images)
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        else:
            with torch.no_grad():
                model(images)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_dge_s12")
    parser.add_argument("--dataset", default=None, help="default ecssd:$DGE_EXPLAIN_HOME/data/ecssd")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layers", default="1,4,8,12")
    args = parser.parse_args(argv)
    dataset = paths.expand(args.dataset) if args.dataset else f"ecssd:{paths.home() / 'data' / 'ecssd'}"
    model = zoo.load_model(args.model)
    data = segmentation_dataset(dataset)
    loader = DataLoader(Subset(data, range(min(args.limit, len(data)))), batch_size=args.batch_size,
                        num_workers=args.workers)
    _loop_seconds(model, [next(iter(loader))], backward=True)  # warm-up
    rows = []
    runs = [("forward", None, False), ("gating + random", ["random", f"gating:{args.layers}"], False),
            ("forward + backward", None, True), ("gating + random + GradCAM",
                                                 ["random", "gradcam", f"gating:{args.layers}"], True)]
    reference = None
    for name, methods, backward in runs:
        if methods is None:
            seconds = _loop_seconds(model, loader, backward)
            reference = seconds
            rows.append([name, f"{seconds:.2f} s", ""])
            continue
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            evaluate(model, dataset, methods, out, limit=args.limit, batch_size=args.batch_size,
                     workers=args.workers, progress=False)
            seconds = time.perf_counter() - start
        rows.append([name, f"{seconds:.2f} s", f"{seconds / reference:.2f}x"])
    print(f"{args.model}, {args.limit} images of {dataset}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(format_table(["run", "time", "vs model pass"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
