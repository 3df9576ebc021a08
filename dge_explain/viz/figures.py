"""Paper-style figures (PNG and PDF): gating maps per layer, side-by-side
comparisons with GradCAM, detection / instance and semantic-segmentation
overlays (appendix Fig. 7 / 8 layout), runtime against resolution (Fig. 6),
precision-recall curves of the evaluated methods and perturbation curves.

Images are shown at their own aspect ratio: the protocol squashes each to the
model's S x S input, so the input, its mask, its maps and its router grid are
carried back to the image's width x height (``viz.unsquash``).  Each map
is drawn from its own min to its own max with that range printed on it in
its units; a map whose range is negligible is greyed and hatched instead
(``viz.ranges``)."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dge_explain.data import Preprocessing  # noqa: E402
from dge_explain.evaluation.report import gating_layer, method_title, ordered_names  # noqa: E402
from dge_explain.explainers import methods_of_run  # noqa: E402
from dge_explain.explainers import batch_maps, build_explainers  # noqa: E402
from dge_explain.evaluation.metrics import pr_curve  # noqa: E402
from dge_explain.models import dge_modules  # noqa: E402
from dge_explain.viz import (draw_granularity, draw_instances, map_panel, map_scale,  # noqa: E402
                             mask_contours, semantic_overlay)
from dge_explain.viz.overlays import resize  # noqa: E402

# The longest side a figure shows an image at: twice the protocol's 224 px input,
# and more than a panel of a few centimetres holds.
DISPLAY_LONGEST = 448

plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "savefig.bbox": "tight"})


def save(figure, stem, dpi: int = 150, formats=("png", "pdf")) -> list[Path]:
    """stem.png (at dpi) and stem.pdf, each written whole or not at all."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in formats:
        path = stem.with_name(f"{stem.name}.{suffix}")
        partial = path.with_name(f".{path.name}.partial")
        figure.savefig(partial, format=suffix, dpi=dpi)
        os.replace(partial, path)
        paths.append(path)
    plt.close(figure)
    return paths


def to_uint8(image: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """A [3, H, W] tensor normalised by `preprocessing` back to RGB uint8 [H, W, 3]."""
    pixels = preprocessing.denormalise(image)
    return np.uint8(pixels.permute(1, 2, 0).numpy() * 255 + 0.5)


def _grid(rows: int, columns: int, cell: float = 1.3):
    figure, axes = plt.subplots(rows, columns, figsize=(columns * cell, rows * cell), squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
    return figure, axes


def _panel_text(axis, text: str, where: str) -> None:
    """Text inside a panel: at its bottom left, or centred."""
    x, y, align = (0.03, 0.04, "left") if where == "bottom" else (0.5, 0.5, "center")
    axis.text(x, y, text, transform=axis.transAxes, fontsize=6, color="black", ha=align,
              va="bottom" if where == "bottom" else "center",
              bbox=dict(facecolor="white", alpha=0.85, pad=1.2, linewidth=0))


def map_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None,
             maps: dict[str, Sequence[np.ndarray]], notes: Sequence[dict[str, str]] | None = None,
             colorbar: bool = True, shown: dict[str, Sequence[np.ndarray]] | None = None):
    """Rows: images (each at its own size and aspect ratio); columns: image, mask
    (its contour; no column when masks is None), then one map per method carried back to the image's size
    (masks and maps may be at the model's S x S input), drawn from its own min to
    its own max with that range printed under it in its units, or greyed and
    hatched when its range is negligible, "flat: range R" printed across it;
    ``notes[row][method]`` is printed at a panel's bottom; ``shown[method][row]``, where
    given, is the map drawn (e.g. carried back through a crop), its range still that of the map."""
    names = ordered_names(maps)
    first = 1 if masks is None else 2
    figure, axes = _grid(len(images), first + len(names), cell=1.5)
    for row, image in enumerate(images):
        size = (image.shape[1], image.shape[0])
        axes[row, 0].imshow(image)
        if masks is not None:
            outline = resize(np.uint8(np.asarray(masks[row]) > 0), size, nearest=True)
            axes[row, 1].imshow(mask_contours(np.uint8(outline[..., None] * [255, 255, 255]), outline,
                                              color=(0, 200, 0)))
        for column, name in enumerate(names, start=first):
            panel = map_panel(image, maps[name][row], map_scale(name),
                              shown=None if shown is None else shown[name][row])
            axes[row, column].imshow(panel.pixels)
            axes[row, column].set_xlabel(panel.range, fontsize=5, labelpad=1.5)
            if panel.flat:
                _panel_text(axes[row, column], panel.flat, "centre")
            if notes is not None and name in notes[row]:
                _panel_text(axes[row, column], notes[row][name], "bottom")
    for column, title in enumerate(["image", "mask"][:first] + [method_title(n).replace(" (", "\n(") for n in names]):
        axes[0, column].set_title(title)
    if colorbar:
        mappable = plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1))
        bar = figure.colorbar(mappable, ax=axes, fraction=0.015, pad=0.04,
                              label="each map from its own min to its own max (printed under it)")
        bar.set_ticks([0, 1], labels=["min", "max"])
    return figure


def display_size(image_size: tuple[int, int], longest: int = DISPLAY_LONGEST) -> tuple[int, int]:
    """(width, height) to show an image of image_size at: its aspect ratio, its
    longer side at most `longest`."""
    width, height = image_size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def collect_maps(dataset, explainers, indices: Sequence[int]):
    """Images (uint8, each carried back from the model's input to its own aspect
    ratio, longer side at most DISPLAY_LONGEST), masks and every explainer's maps
    (both at the model's input, as the evaluation scores them) for the given
    dataset items (one batch, as the evaluation computes them)."""
    items = [dataset[i] for i in indices]
    failed = [item["error"] for item in items if item["error"]]
    if failed:
        raise ValueError(failed[0])
    batch = torch.stack([item["image"] for item in items])
    maps = {name: list(values.numpy()) for name, values in
            batch_maps(explainers, batch, [item["key"] for item in items]).items()}
    images = [resize(to_uint8(item["image"], dataset.preprocessing), display_size(tuple(item["size"].tolist())))
              for i, item in zip(indices, items)]
    return images, [item["mask"].numpy() for item in items], maps


def granularity_grid(model, batch: torch.Tensor, layers: Sequence[int], preprocessing: Preprocessing,
                     sizes: Sequence[tuple[int, int]] | None = None):
    """The mixed-grained patches each chosen layer's router picked (eval mode):
    rows are images, columns layers; finest regions are split into their k x k
    query patches, coarser ones tinted.  sizes: (width, height) to show each image
    at (default: the model's input), the grid stretched with it."""
    dges = dge_modules(model)
    with torch.no_grad():
        model.eval()(batch)
    choices = {layer: dges[layer - 1].routing.choice.cpu() for layer in layers}
    patch = model.patch_embed.proj.stride[0]
    figure, axes = _grid(len(batch), len(layers))
    for row, image in enumerate(batch):
        input_size = (image.shape[-1], image.shape[-2])
        pixels = resize(to_uint8(image, preprocessing), sizes[row] if sizes else input_size)
        for column, layer in enumerate(layers):
            dge = dges[layer - 1]
            axes[row, column].imshow(draw_granularity(pixels, choices[layer][row], dge.split_sizes,
                                                      dge.region_size, patch, input_size=input_size))
            if row == 0:
                axes[row, column].set_title(f"Layer {layer}")
    return figure


def per_image_miou(run: Path) -> dict[tuple[str, str], float]:
    """(image key, method) -> mIoU of that image, from per_image.csv."""
    table = {}
    with (run / "per_image.csv").open() as handle:
        for row in csv.DictReader(handle):
            table[(row["image"], row["method"])] = (float(row["iou_background"]) +
                                                    float(row["iou_foreground"])) / 2
    return table


def _label_rows(axes, labels: Sequence[str]) -> None:
    for axis, label in zip(axes[:, 0], labels):
        axis.set_ylabel(label)


def _panel_grid(panels: dict[str, list[np.ndarray]], cell: float, side_by_side: bool):
    """One panel per (source, image): a row per source (labelled at its left), or
    with side_by_side a row per image and a column per source (titled on top)."""
    names = list(panels)
    count = len(next(iter(panels.values()))) if panels else 0
    figure, axes = _grid(count, len(names), cell) if side_by_side else _grid(len(names), count, cell)
    for index, name in enumerate(names):
        for image, panel in enumerate(panels[name]):
            (axes[image, index] if side_by_side else axes[index, image]).imshow(panel)
    if side_by_side:
        for axis, name in zip(axes[0], names):
            axis.set_title(name)
    else:
        _label_rows(axes, names)
    figure.subplots_adjust(wspace=0.03, hspace=0.03)
    return figure


def instance_grid(images: Sequence[np.ndarray], sources: dict[str, Sequence[list]], cell: float = 2.4,
                  side_by_side: bool = False):
    """Appendix Fig. 7 layout: one row per source (ground truth or a model's
    predictions), one column per image; with side_by_side one row per image and one
    column per source (backbone A | backbone B, as the appendix compares PVT with
    PVT+DGE).  Instances drawn with boxes, labels and masks in distinct colours."""
    panels = {name: [draw_instances(image, found) for image, found in zip(images, sources[name])]
              for name in sources}
    return _panel_grid(panels, cell, side_by_side)


def semantic_grid(images: Sequence[np.ndarray], sources: dict[str, Sequence[np.ndarray]],
                  palette="coco", classes=None, cell: float = 2.4, side_by_side: bool = False):
    """Appendix Fig. 8 layout: the images, then each source's label map over them,
    in rows (a column per image), or with side_by_side in columns (a row per image:
    image | backbone A | backbone B); a legend of the classes present."""
    legend: dict[str, tuple] = {}
    panels = {"image": list(images)}
    for name in sources:
        panels[name] = []
        for image, labels in zip(images, sources[name]):
            overlay, present = semantic_overlay(image, labels, palette, classes=classes)
            panels[name].append(overlay)
            legend.update(dict(present))
    figure = _panel_grid(panels, cell, side_by_side)
    handles = [Patch(color=np.array(color) / 255, label=label) for label, color in sorted(legend.items())]
    figure.legend(handles=handles, loc="lower center", ncol=min(8, max(1, len(handles))), frameon=False,
                  bbox_to_anchor=(0.5, -0.04))
    return figure


def runtime_figure(bench: dict):
    """Appendix Fig. 6 layout: one panel per device, latency against resolution,
    dense (dashed) and DGE (solid) per model, speed-up annotated at each point."""
    cases = bench["cases"]
    devices = [d for d in ("cpu", "cuda") if any(c["device"] == d for c in cases)]
    figure, axes = plt.subplots(1, len(devices), figsize=(5.5 * len(devices), 4.0), squeeze=False)
    for axis, device in zip(axes[0], devices):
        chosen = [c for c in cases if c["device"] == device]
        models = sorted({c["model"] for c in chosen})
        for index, (color, model) in enumerate(zip(plt.cm.tab10.colors, models)):
            rows = sorted((c for c in chosen if c["model"] == model and c["batch"] == min(
                x["batch"] for x in chosen if x["model"] == model)), key=lambda c: c["resolution"])
            x = [c["resolution"] for c in rows]
            axis.plot(x, [c["dense_ms"] for c in rows], "--o", color=color, markersize=3,
                      label=f"{model} dense")
            axis.plot(x, [c["dge_ms"] for c in rows], "-o", color=color, markersize=3,
                      label=f"{model} + DGE")
            for c in rows:  # speed-up under each DGE point, staggered per model
                axis.annotate(f"{c['dense_ms'] / c['dge_ms']:.2f}x", (c["resolution"], c["dge_ms"]),
                              textcoords="offset points", xytext=(8, -9 - 7 * index), ha="left",
                              fontsize=5.5, color=color)
        axis.set_yscale("log")
        axis.set_xlabel("resolution (side, px)")
        axis.set_ylabel("latency (ms, median)")
        env = bench.get("environment", {})
        hardware = env.get("gpu") if device == "cuda" else f"{env.get('cpu', 'CPU')}, {env.get('threads')} threads"
        axis.set_title(f"{device.upper()}: {hardware}")
        axis.legend(fontsize=6)
        axis.grid(alpha=0.3)
    return figure


def speedup_figure(cases: list[dict]):
    """Tables 7-8 on this machine: DGE's speed-up (dense / DGE latency) per backbone
    and input size, beside the paper's CPU speed-up of the same backbone and task."""
    kind = lambda c: c.get("preset") or ("whole Mask R-CNN" if "dense_detector_gmacs" in c else "")
    labels = [f"{c['backbone']}\n{kind(c)}\n{'x'.join(map(str, c['input']))}".replace("\n\n", "\n") for c in cases]
    x = np.arange(len(cases))
    figure, axis = plt.subplots(figsize=(max(4.0, 1.1 * len(cases)), 3.2))
    measured = axis.bar(x - 0.2, [c["speedup"] for c in cases], 0.4, label="measured (this CPU)")
    paper = axis.bar(x + 0.2, [c["paper_cpu_speedup"] or 0 for c in cases], 0.4, label="paper (CPU)", alpha=0.6)
    for bars in (measured, paper):
        axis.bar_label(bars, fmt="%.2fx", fontsize=6)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xticks(x, labels, fontsize=6)
    axis.set_ylabel("speed-up of DGE (dense / DGE latency)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def budget_figure(points: dict[str, dict], dense_top1: float | None = None):
    """Top-1 against complexity ratio (dynamic / static MACs), one labelled point
    per budget, the dense model at ratio 1 when given."""
    figure, axis = plt.subplots(figsize=(3.6, 3.0))
    ordered = sorted(points.items(), key=lambda item: item[1]["ratio"])
    axis.plot([p["ratio"] for _, p in ordered], [100 * p["top1"] for _, p in ordered], "-o", markersize=3,
              label="DGE")
    for label, point in ordered:
        axis.annotate(label, (point["ratio"], 100 * point["top1"]), textcoords="offset points",
                      xytext=(4, -9), fontsize=6)
    if dense_top1 is not None:
        axis.plot([1.0], [100 * dense_top1], "s", color="black", markersize=4, label="dense")
    axis.set_xlabel("complexity ratio (dynamic / static MACs)")
    axis.set_ylabel("top-1 (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6)
    return figure


def pr_figure(histograms: dict[str, np.ndarray]):
    """Dataset precision-recall curves of every method of a run (two-channel protocol)."""
    figure, axis = plt.subplots(figsize=(4.4, 3.6))
    names = ordered_names(histograms)
    colours = plt.cm.tab20(np.linspace(0, 1, max(1, len(names))))
    for index, (colour, name) in enumerate(zip(colours, names)):
        recall, precision = pr_curve(histograms[name])
        axis.plot(recall, precision, color=colour, linestyle=("-", "--")[index % 2], label=method_title(name))
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=5, ncol=2)
    return figure


def perturbation_figure(summary: dict):
    """Top-1 against the fraction of pixels removed: one panel per explained class
    (predicted, target) and order (positive: most relevant first; negative: least
    relevant first), one line per method; one legend beside the panels (the AUCs
    are in the run's tables)."""
    fractions = summary["fractions"]
    figure, axes = plt.subplots(2, 2, figsize=(10.0, 6.4), sharex=True, sharey=True, squeeze=False)
    colours = plt.cm.tab20(np.linspace(0, 1, max(1, len(summary["curves"]))))
    for row, variant in enumerate(("predicted", "target")):
        for column, direction in enumerate(("positive", "negative")):
            axis = axes[row, column]
            for colour, (name, curves) in zip(colours, summary["curves"].items()):
                axis.plot(fractions, [100 * v for v in curves[variant][direction]], "-o", markersize=2,
                          color=colour, label=method_title(name))
            axis.set_title(f"{direction} ({'lower' if direction == 'positive' else 'higher'} AUC is better), "
                           f"{variant} class", fontsize=9)
            axis.grid(alpha=0.3)
            if row == 1:
                axis.set_xlabel("fraction of pixels removed")
            if column == 0:
                axis.set_ylabel("top-1 (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize=7, frameon=False)
    figure.subplots_adjust(right=0.79)
    return figure


def read_results(run: Path) -> dict:
    """RUN/results.json, or one line saying what RUN lacks."""
    path = run / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --run takes the output folder of a finished "
                                "`dge-explain evaluate` or `dge-explain perturb` run")
    try:
        results = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); rerun the command that wrote it "
                         "with the same --out to rebuild it") from None
    if not isinstance(results, dict) or not isinstance(results.get("run"), dict):
        raise ValueError(f"{path} holds no 'run' settings: not the results of `dge-explain evaluate` "
                         "or `dge-explain perturb`")
    return results


def run_command(results: dict) -> str:
    """'evaluate' or 'perturb': the command that wrote a results.json."""
    if "curves" in results and "fractions" in results:
        return "perturb"
    if "dataset" in results["run"] and "methods" in results:
        return "evaluate"
    return "unknown"


def figures_for_run(run, out, images: int = 4, home=None, dpi: int = 150, methods=None) -> list[Path]:
    """Every figure a run supports: of an evaluation run, its maps, router grids,
    comparison, precision-recall curves (and runtime, from a bench JSON inside
    it); of a perturbation run, its curves (the map figures need masks: one line
    on stderr says so).  The comparison figure shows `methods` (default: every
    method of the run but random)."""
    from dge_explain.api import load_model
    from dge_explain.data import segmentation_dataset

    run, out = Path(run), Path(out)
    results = read_results(run)
    command = run_command(results)
    if command == "perturb":
        written = save(perturbation_figure(results), out / "perturbation", dpi)
        print(f"{run} is a `dge-explain perturb` run: drew its perturbation curves; the map, granularity, "
              "comparison and precision-recall figures need a `dge-explain evaluate` run (images with masks)",
              file=sys.stderr)
        return written
    if command != "evaluate":
        raise ValueError(f"{run / 'results.json'} is neither an evaluate nor a perturb run's results "
                         "(no 'dataset' and 'methods', no 'curves' and 'fractions')")
    info, count = results["run"], results["images"]
    written = []
    if (run / "pr_histograms.npz").exists():
        with np.load(run / "pr_histograms.npz") as data:
            written += save(pr_figure({k: data[k] for k in data.files}), out / "pr_curves", dpi)
    if "model" not in info:
        return written  # a run made through the API without a model name: no map figures
    model = load_model(info["model"], info.get("checkpoint"), home=home, weights=info.get("weights"),
                       trained=info.get("trained"), random_weights=info.get("random_weights", False),
                       fresh_routers=info.get("fresh_routers", False))
    dataset = segmentation_dataset(info["dataset"], Preprocessing(**info["preprocessing"]))
    indices = list(range(min(images, count)))
    chosen = [m for m in methods_of_run(info) if m != "random"] if methods is None else list(methods)
    if not chosen:
        return written
    images_, masks, maps = collect_maps(dataset, build_explainers(model, chosen), indices)
    layers = {name: values for name, values in maps.items() if gating_layer(name)}
    if layers:
        written += save(map_grid(images_, masks, layers), out / "gating_layers", dpi)
        if hasattr(model, "patch_embed"):  # token grid of a ViT: one patch size
            batch = torch.stack([dataset[i]["image"] for i in indices])
            numbers = sorted({gating_layer(name)[0] for name in layers})
            written += save(granularity_grid(model, batch, numbers, dataset.preprocessing,
                                             [(image.shape[1], image.shape[0]) for image in images_]),
                            out / "granularity", dpi)
    scores = per_image_miou(run)
    keys = dataset.keys()
    notes = [{name: f"mIoU {100 * scores[(keys[i], name)]:.0f}" for name in maps
              if (keys[i], name) in scores} for i in indices]
    written += save(map_grid(images_, masks, maps, notes), out / "comparison", dpi)
    for bench in sorted(run.glob("*bench*.json")):
        written += save(runtime_figure(json.loads(bench.read_text())), out / f"runtime_{bench.stem}", dpi)
    return written
