"""Where a DGE forward spends the time it does not save: torch.profiler over a
dense model and its DGE twin at one input size (batch 1 by default), with the
shipped model's trained gates (on held-out photos) or gates forced to a
complexity ratio; the operators' self CPU time per forward, grouped by what they
do (the DGE block's own work: router, routing table, compress / restore; and the
work both models share: matmuls, attention, norms, ...), the top operators of the
DGE forward, and the wall-clock times of the two forwards timed interleaved
without the profiler.  Also the two forwards at a tiny input (64 px, the same
kind of gates): their cost that does not shrink with the tokens (dispatch,
thread hand-offs, the DGE block's extra small ops), which bounds the latency
ratio from below at small inputs: (DGE fixed + complexity ratio x (dense -
dense fixed)) / dense.

    python -m dge_explain.bench.profile --models deit_tiny --gates trained --threads 2 --out runs/profile
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from dge_explain.bench.runtime import build_pair, case_inputs, trained_pair
from dge_explain.bench.timing import measure_interleaved
from dge_explain.complexity import dge_complexity
from dge_explain.console import format_table
from dge_explain.models import dge_modules

# the tiny input whose forwards are (nearly) all fixed cost: a 4 x 4 token grid for 16 px patches
FIXED_COST_RESOLUTION = 64

# operator name -> group, first match wins (substrings of profiler keys)
GROUPS = (
    ("routing table", ("route_to_patches", "patch_table", "uniform_rows", "region_rows")),
    ("compress / restore", ("compress", "restore", "decompress")),
    ("router and pooling", ("avg_pool2d", "softmax", "argmax", "aminmax", "gate")),
    ("attention", ("attention", "scaled_dot_product", "_flash", "bmm", "baddbmm")),
    ("matmuls", ("addmm", "aten::mm", "matmul", "linear")),
    ("norms", ("layer_norm",)),
    ("activations", ("gelu",)),
    ("copies and views", ("copy_", "cat", "contiguous", "clone", "empty", "reshape", "view", "permute",
                          "transpose", "expand", "select", "slice", "index", "repeat", "flatten", "as_strided",
                          "unsqueeze", "split", "chunk", "narrow", "stack", "aten::to")),
    ("elementwise", ("add", "mul", "div", "sub")),
)


def group_of(name: str) -> str:
    for group, needles in GROUPS:
        if any(needle in name for needle in needles):
            return group
    return "other"


def self_times(run, forwards: int) -> dict[str, float]:
    """Operator name -> self CPU milliseconds per forward."""
    run()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(forwards):
            run()
    return {event.key: event.self_cpu_time_total / 1e3 / forwards for event in profiler.key_averages()}


def grouped(times: dict[str, float]) -> dict[str, float]:
    groups: dict[str, float] = {}
    for name, ms in times.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    return groups


def profile_pair(name: str, gates: str, resolution: int, batch: int, ratio: float, forwards: int,
                 min_time: float, home=None) -> dict:
    dense, dge = trained_pair(name, home) if gates == "trained" else build_pair(name)
    images, inputs, forcing, _ = case_inputs(dense, dge, resolution, batch, ratio, gates == "trained", home)
    with torch.inference_mode(), forcing:
        dense_ops = self_times(lambda: dense(images), forwards)
        dge_ops = self_times(lambda: dge(images), forwards)
        wall = measure_interleaved({"dense": lambda: dense(images), "dge": lambda: dge(images)}, min_time=min_time)
        dge(images)
        complexity = float(dge_complexity(dge).ratio)
        fine = [float((block.routing.choice == 0).double().mean()) for block in dge_modules(dge)]
    tiny, _, tiny_forcing, _ = case_inputs(dense, dge, FIXED_COST_RESOLUTION, batch, ratio, gates == "trained", home)
    with torch.inference_mode(), tiny_forcing:
        fixed = measure_interleaved({"dense": lambda: dense(tiny), "dge": lambda: dge(tiny)}, min_time=min_time)
    dense_ms, dge_ms = wall["dense"].median * 1e3, wall["dge"].median * 1e3
    dense_fixed, dge_fixed = fixed["dense"].median * 1e3, fixed["dge"].median * 1e3
    return {"model": name, "gates": gates if gates == "trained" else f"forced ratio {ratio}", "inputs": inputs,
            "resolution": resolution, "batch": batch, "threads": torch.get_num_threads(), "forwards": forwards,
            "complexity_ratio": complexity, "fine_per_layer": fine,
            "dense_wall_ms": dense_ms, "dge_wall_ms": dge_ms,
            "fixed_cost_resolution": FIXED_COST_RESOLUTION, "dense_fixed_ms": dense_fixed, "dge_fixed_ms": dge_fixed,
            "latency_ratio_floor": (dge_fixed + complexity * max(dense_ms - dense_fixed, 0.0)) / dense_ms,
            "dense_groups_ms": grouped(dense_ops), "dge_groups_ms": grouped(dge_ops),
            "dense_ops_ms": dense_ops, "dge_ops_ms": dge_ops}


def markdown(result: dict) -> str:
    title = (f"{result['model']}, {result['gates']} ({result['inputs']}), {result['resolution']} px, batch "
             f"{result['batch']}, {result['threads']} threads: complexity ratio {result['complexity_ratio']:.3f}, "
             f"wall {result['dense_wall_ms']:.1f} ms dense, {result['dge_wall_ms']:.1f} ms DGE (latency ratio "
             f"{result['dge_wall_ms'] / result['dense_wall_ms']:.3f}); share of finest regions per layer "
             f"{', '.join(f'{f:.2f}' for f in result['fine_per_layer'])}. At {result['fixed_cost_resolution']} px "
             f"the forwards take {result['dense_fixed_ms']:.1f} ms dense, {result['dge_fixed_ms']:.1f} ms DGE: "
             f"the latency ratio this leaves reachable is at best {result['latency_ratio_floor']:.3f}")
    dense, dge = result["dense_groups_ms"], result["dge_groups_ms"]
    names = sorted(set(dense) | set(dge), key=lambda g: -max(dense.get(g, 0), dge.get(g, 0)))
    rows = [[g, f"{dense.get(g, 0):.2f}", f"{dge.get(g, 0):.2f}"] for g in names]
    rows.append(["total self time", f"{sum(dense.values()):.2f}", f"{sum(dge.values()):.2f}"])
    top = sorted(result["dge_ops_ms"].items(), key=lambda item: -item[1])[:12]
    top_rows = [[op, group_of(op), f"{ms:.2f}", f"{result['dense_ops_ms'].get(op, 0):.2f}"] for op, ms in top]
    return "\n\n".join([title, format_table(["operators", "dense ms / forward", "DGE ms / forward"], rows),
                        format_table(["top DGE operators", "group", "DGE ms / forward", "dense ms / forward"],
                                     top_rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_tiny", "deit_small"])
    parser.add_argument("--gates", nargs="+", default=["trained", "forced"], choices=["trained", "forced"],
                        help="trained: the shipped DeiT-Tiny's routers (deit_tiny only); forced: --ratio")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--forwards", type=int, default=20, help="profiled forwards per model")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of interleaved wall-clock timing")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--home", help="the data home (default $DGE_EXPLAIN_HOME)")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [profile_pair(name, gates, args.resolution, args.batch, args.ratio, args.forwards, args.min_time,
                            args.home)
               for name in args.models for gates in args.gates if gates == "forced" or name == "deit_tiny"]
    text = "\n\n".join(markdown(result) for result in results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(f"`{' '.join(['python -m dge_explain.bench.profile', *sys.argv[1:]])}`"
                                          f"\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
