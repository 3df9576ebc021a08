"""DGE against the token-reduction peers on the same weights: dense, DGE with
forced gates at each MACs ratio, the shipped DGE-DeiT-Ti with its trained gates,
ToMe and EViT (``dge_explain.models.peers``, set to the same MACs ratios):
top-1 on imagenet-sample's odd (held-out) half (DeiT-Ti, real weights, 224 px),
MACs, and CPU latency at each resolution and batch size, every variant of a
model timed interleaved in one process (``bench.timing``).  DeiT-S has random
weights: its rows are speed only.

Ratios: ToMe's r (the same at every block) and EViT's keep rate (at the paper's
blocks 4, 7, 10) are chosen per resolution as the setting whose MACs come nearest
the ratio of the dense model's MACs; DGE's forced gates are drawn so that its
complexity ratio (dynamic / static MACs) meets it in expectation.  Every row
reports its measured MACs over the dense model's ("MACs ratio").  The timed
inputs are held-out images (resized to each resolution), so that trained gates
see photos; random inputs where the data is missing (said in the JSON).

    python -m dge_explain.bench.peers --threads 2 --out runs/peers
    dge-explain bench --peers --threads 2 --json runs/peers.json

writes runs/peers.json, .md, and the figure (top-1 against latency) .png / .pdf.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from dge_explain import paths
from dge_explain.bench.runtime import (HELD_OUT, build_pair, environment, held_out, timing_images, trained_pair,
                                      write_report)
from dge_explain.bench.timing import measure_interleaved
from dge_explain.complexity import dense_macs, dge_complexity, fine_fraction_for_ratio
from dge_explain.console import format_table
from dge_explain.data import Preprocessing
from dge_explain.models import force_gates, random_fraction
from dge_explain.models.peers import evit_for_ratio, patch, reduced_macs, tome_for_ratio

RATIOS = (0.5, 0.6, 0.75)
MODELS = ("deit_tiny", "deit_small")
RESOLUTIONS = (224, 448)
BATCH_SIZES = (1, 16)
TITLES = {"dense": "dense", "dge-forced": "DGE (forced)", "dge-trained": "DGE (trained)", "tome": "ToMe",
          "evit": "EViT"}


@dataclass
class Variant:
    """One way to run a model at one resolution."""
    method: str                      # a key of TITLES
    target: float | None             # the MACs ratio it was set to
    setting: str
    run: Callable[[torch.Tensor], torch.Tensor]
    macs: float | None = None        # per image; None: a DGE model's, read after each forward
    dge: torch.nn.Module | None = field(repr=False, default=None)

    @property
    def label(self) -> str:
        return label(self.method, self.target)

    def measured(self) -> tuple[float, float | None]:
        """(MACs per image, DGE's complexity ratio or None) of the last forward."""
        if self.dge is None:
            return self.macs, None
        complexity = dge_complexity(self.dge)
        return float(complexity.dynamic.mean()), float(complexity.ratio)


def label(method: str, target: float | None) -> str:
    return TITLES[method] + (f" {target:g}" if target is not None else "")


def _forced(dge, policy):
    def run(images):
        with force_gates(dge, policy):
            return dge(images)
    return run


def variants(dense, dge, trained: bool, resolution: int, ratios) -> list[Variant]:
    """Every variant of one model at one resolution (ToMe and EViT: copies of the
    dense model sharing its weights)."""
    size = (resolution, resolution)
    found = [Variant("dense", None, "", dense, dense_macs(dense, size))]
    if trained:
        found.append(Variant("dge-trained", None, "trained routers", dge, dge=dge))
    for ratio in ratios:
        fine = fine_fraction_for_ratio(dge, size, ratio)
        found.append(Variant("dge-forced", ratio, f"fine {fine:.3f}",
                             _forced(dge, random_fraction(fine, seed=resolution)), dge=dge))
    for ratio in ratios:
        for method, choose in (("tome", tome_for_ratio), ("evit", evit_for_ratio)):
            reduction, _ = choose(dense, size, ratio)
            model = patch(dense, reduction, copy_model=True)
            setting = f"r={reduction.r[0]}" if method == "tome" else \
                f"keep {reduction.keep_rate:.3f} at {','.join(map(str, reduction.layers))}"
            found.append(Variant(method, ratio, setting, model, reduced_macs(model, size)))
    return found


@torch.inference_mode()
def top1(found: list[Variant], data, batch_size: int = 50, workers: int = 2) -> dict[str, dict]:
    """Top-1 of every variant on the same images, batch by batch (each image decoded
    once), with DGE's complexity ratio over them."""
    correct = {v.label: 0 for v in found}
    complexity = {v.label: 0.0 for v in found}
    for images, labels in DataLoader(data, batch_size=batch_size, num_workers=workers):
        for variant in found:
            correct[variant.label] += int((variant.run(images).argmax(1) == labels).sum())
            ratio = variant.measured()[1]
            complexity[variant.label] += ratio * len(labels) if ratio is not None else 0.0
    return {v.label: {"top1": correct[v.label] / len(data),
                      "dge_complexity_ratio": complexity[v.label] / len(data) if v.dge is not None else None}
            for v in found}


def load_pair(name: str, home=None) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(dense, DGE, whether the DGE model's gates are trained and its weights real):
    DeiT-Ti's real weights and the shipped routers, DeiT-S at random."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name}; the peers benchmark runs {', '.join(MODELS)}")
    trained = name == "deit_tiny"
    return (*(trained_pair(name, home) if trained else build_pair(name)), trained)


def run(models=MODELS, ratios=RATIOS, resolutions=RESOLUTIONS, batch_sizes=BATCH_SIZES, images: int | None = None,
        min_time: float = 2.0, home=None, report=print, load=load_pair, accuracy_resolution: int = 224,
        **timing) -> dict:
    """The benchmark's cases (see the module's text); `images`: top-1 on the first
    N held-out images (None: all, 0: no top-1) at `accuracy_resolution`, for the
    models with trained gates; `load(name, home)`: the models; `timing`:
    measure_interleaved's warmup / min_repeats."""
    cases, accuracy, inputs = [], {}, {}
    for name in models:
        dense, dge, trained = load(name, home)
        preprocessing_of = lambda resolution: Preprocessing.of(dense, input_size=resolution)
        if trained and images != 0:
            data = held_out(preprocessing_of(accuracy_resolution), home, images)
            if data is None:
                report(f"no top-1: {paths.home(home) / HELD_OUT} is missing")
            else:
                report(f"{name}: top-1 on {len(data)} held-out images at {accuracy_resolution} px")
                accuracy[name] = {"images": len(data), "resolution": accuracy_resolution,
                                  "variants": top1(variants(dense, dge, trained, accuracy_resolution, ratios), data)}
        for resolution in resolutions:
            found = variants(dense, dge, trained, resolution, ratios)
            for batch in batch_sizes:
                x, inputs[f"{name} {resolution} {batch}"] = timing_images(home, preprocessing_of, resolution, batch)
                with torch.inference_mode():
                    timed = measure_interleaved({v.label: (lambda v=v: v.run(x)) for v in found}, "cpu",
                                                min_time=min_time, **timing)
                    measured = {}
                    for variant in found:       # the MACs of a forward on the timed images
                        variant.run(x)
                        measured[variant.label] = variant.measured()
                dense_ms = timed["dense"].median * 1e3
                dense_total = measured["dense"][0]
                for variant in found:
                    total, complexity = measured[variant.label]
                    ms = timed[variant.label].median * 1e3
                    cases.append({"model": name, "resolution": resolution, "batch": batch,
                                  "method": variant.method, "target": variant.target, "setting": variant.setting,
                                  "gmacs": total / 1e9, "macs_ratio": total / dense_total,
                                  "dge_complexity_ratio": complexity, "ms": ms,
                                  "iqr_ms": timed[variant.label].iqr * 1e3, "latency_ratio": ms / dense_ms,
                                  "repeats": timed[variant.label].repeats})
                    report(format_table(HEADER, [row(cases[-1])]).splitlines()[-1])
    return {"environment": environment(torch.device("cpu")), "ratios": list(ratios), "accuracy": accuracy,
            "timing_inputs": inputs, "cases": cases}


HEADER = ["model", "res", "batch", "method", "setting", "GMACs", "MACs ratio", "ms", "latency ratio"]


def row(case: dict) -> list[str]:
    return [case["model"], str(case["resolution"]), str(case["batch"]), label(case["method"], case["target"]),
            case["setting"],
            f"{case['gmacs']:.3f}", f"{case['macs_ratio']:.3f}", f"{case['ms']:.1f} ± {case['iqr_ms'] / 2:.1f}",
            f"{case['latency_ratio']:.3f}"]


def matched(result: dict) -> tuple[list[str], list[list[str]]]:
    """At each ratio, model, resolution and batch: the latency ratios of DGE (forced),
    ToMe and EViT side by side, the fastest named, and DGE's against the best peer."""
    header = ["model", "res", "batch", "ratio", "DGE (forced)", "ToMe", "EViT", "fastest", "DGE / best peer"]
    rows = []
    keys = sorted({(c["model"], c["resolution"], c["batch"], c["target"]) for c in result["cases"]
                   if c["target"] is not None}, key=lambda k: (MODELS.index(k[0]) if k[0] in MODELS else 9, *k[1:]))
    for model, resolution, batch, target in keys:
        found = {c["method"]: c for c in result["cases"] if (c["model"], c["resolution"], c["batch"], c["target"])
                 == (model, resolution, batch, target)}
        fastest = min(found, key=lambda m: found[m]["ms"])
        best_peer = min(found[m]["ms"] for m in ("tome", "evit"))
        rows.append([model, str(resolution), str(batch), f"{target:g}",
                     *(f"{found[m]['latency_ratio']:.3f} ({found[m]['macs_ratio']:.3f})"
                       for m in ("dge-forced", "tome", "evit")),
                     TITLES[fastest], f"{found['dge-forced']['ms'] / best_peer:.3f}"])
    return header, rows


def markdown(result: dict, command: str) -> str:
    lines = ["# DGE against token-reduction peers on the same weights", "", f"`{command}`", "",
             f"{result['environment']}", ""]
    for name, table in result["accuracy"].items():
        lines += [f"## Top-1, {name}, {table['resolution']} px, {table['images']} images of imagenet-sample's "
                  "odd half", ""]
        timed = {label(c["method"], c["target"]): c for c in result["cases"] if c["model"] == name
                 and c["resolution"] == table["resolution"]}
        rows = []
        for variant, value in table["variants"].items():
            case = timed.get(variant)
            complexity = value["dge_complexity_ratio"]
            rows.append([variant, case["setting"] if case else "", f"{case['macs_ratio']:.3f}" if case else "",
                         f"{complexity:.3f}" if complexity is not None else "", f"{100 * value['top1']:.1f}"])
        lines += [format_table(["variant", "setting", "MACs ratio (timed images)",
                                "DGE complexity ratio (these images)", "top-1 %"], rows), ""]
    header, rows = matched(result)
    lines += ["## At matched MACs ratios", "",
              "Latency ratio against the dense model (MACs ratio in brackets); the last column: DGE's "
              "latency over the faster of ToMe and EViT (below 1: DGE is faster).", "",
              format_table(header, rows), "", "## Every case", "",
              format_table(HEADER, [row(c) for c in result["cases"]]), "",
              f"Timed inputs: {result['timing_inputs']}", ""]
    return "\n".join(lines)


def figure(result: dict):
    """Top-1 against latency (DeiT-Ti at the top-1's resolution), one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = next(iter(result["accuracy"]), None)
    if name is None:
        return None
    accuracy = result["accuracy"][name]
    resolution = accuracy["resolution"]
    cases = [c for c in result["cases"] if c["model"] == name and c["resolution"] == resolution]
    batches = sorted({c["batch"] for c in cases})
    plot, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.4), squeeze=False)
    styles = {"dense": ("k", "*"), "dge-trained": ("tab:red", "D"), "dge-forced": ("tab:red", "o"),
              "tome": ("tab:blue", "s"), "evit": ("tab:green", "^")}
    for axis, batch in zip(axes[0], batches):
        for method, (color, marker) in styles.items():
            points = sorted((c for c in cases if c["batch"] == batch and c["method"] == method),
                            key=lambda c: c["target"] or 0)
            xs = [c["ms"] for c in points]
            ys = [100 * accuracy["variants"][label(method, c["target"])]["top1"] for c in points]
            axis.plot(xs, ys, marker=marker, color=color, linestyle="-" if len(xs) > 1 else "none",
                      label=TITLES[method], markersize=5)
            for c, x, y in zip(points, xs, ys):
                if c["target"] is not None:
                    axis.annotate(f"{c['macs_ratio']:.2f}", (x, y), textcoords="offset points", xytext=(3, 3),
                                  fontsize=6, color=color)
        axis.set_xlabel(f"latency (ms, median), batch {batch}, {resolution} px")
        axis.set_ylabel(f"top-1 (%), {accuracy['images']} held-out images")
        axis.set_title(f"{name}: labels are MACs ratios", fontsize=8)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    plot.tight_layout()
    return plot


def write(result: dict, out, command: str) -> list[Path]:
    """out.json, out.md and, when there is a top-1, out.png / out.pdf."""
    from dge_explain.viz.figures import save

    out = Path(out).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "command": command}
    write_report(out.with_suffix(".json"), result, markdown(result, command))
    written = [out.with_suffix(".json"), out.with_suffix(".md")]
    drawn = figure(result)
    if drawn is not None:
        written += save(drawn, out)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS), help="MACs ratios to match")
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(RESOLUTIONS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES))
    parser.add_argument("--images", type=int, help="top-1 on the first N held-out images (default: all 500; 0: none)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of interleaved timing per case")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--out", default="runs/peers", help="writes OUT.json, OUT.md, OUT.png, OUT.pdf")
    parser.add_argument("--home", help="the data home (default $DGE_EXPLAIN_HOME)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.models, args.ratios, args.resolutions, args.batch_sizes, args.images, args.min_time,
                 args.home, report=lambda line: print(line, flush=True))
    command = "python -m dge_explain.bench.peers " + " ".join(sys.argv[1:] if argv is None else argv)
    for path in write(result, args.out, command.strip()):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
