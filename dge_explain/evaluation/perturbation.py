"""Faithfulness: the perturbation test of Chefer et al. (CVPR 2021, Table 1), and
a router test that only a DGE model allows.

Perturbation, on labelled images, for every explainer: rank the pixels of its map
(at the model's input size; ties by pixel index); remove 10 %, 20 %, ..., 90 % of
them (set to 0 after normalisation, i.e. the mean colour), most relevant first
("positive": accuracy should fall fast, lower AUC is better) or least relevant
first ("negative": accuracy should hold, higher AUC is better); classify again;
top-1 against the true label at each step, the unperturbed top-1 at 0 %; AUC =
trapezoidal area over the fractions 0-0.9, x 100.  Both with the predicted class
as the explained class and with the true ("target") class; maps that do not
depend on the class, or images classified right, share their curves.

Router test (DGE models): in every DGE layer, force the finest granularity on
the fraction `budget` of regions a map ranks highest (its mean over the region),
and the coarsest elsewhere; then on the regions it ranks lowest; top-1 of each,
against random regions at the same budget.  The compute is the same either way:
a map that marks what the classifier needs keeps more accuracy where it says.

Resumable and torchrun-aware as ``evaluate`` (records keyed by image identity).
Outputs: results.json, results.csv (accuracy at every fraction and the AUC),
results.md; `dge-explain perturb` (and `figures --run`) draws the curves.
"""
from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dge_explain.data import IdentifiedImages, LabelledImageFolder, Preprocessing
from dge_explain.data.folders import parse_folder_spec
from dge_explain.evaluation.report import method_title, ordered_names
from dge_explain.evaluation.segmentation import check_input_size
from dge_explain.explainers import batch_maps, describe_maps
from dge_explain.models import dge_modules, force_gates
from dge_explain.evaluation.loop import release_freed_memory, run_resumable
from dge_explain.evaluation.runs import RunFolder, write_atomic

FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 10))
VARIANTS = ("predicted", "target")
DIRECTIONS = ("positive", "negative")


def removal_masks(maps: torch.Tensor) -> torch.Tensor:
    """[B, H, W] maps -> keep masks [B, 2, 9, H, W] (positive, negative; per fraction):
    False where a pixel is removed."""
    batch, height, width = maps.shape
    pixels = height * width
    order = torch.argsort(torch.nan_to_num(maps.flatten(1).double(), nan=-np.inf), dim=1, descending=True,
                          stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=maps.device).expand(batch, -1))
    removed = torch.tensor([round(f * pixels) for f in FRACTIONS], device=maps.device)
    positive = rank[:, None] < removed[None, :, None]                     # the most relevant first
    negative = rank[:, None] >= pixels - removed[None, :, None]           # the least relevant first
    return ~torch.stack([positive, negative], 1).view(batch, 2, len(FRACTIONS), height, width)


@torch.no_grad()
def _classify(model: nn.Module, images: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([model(images[i:i + chunk]).argmax(1) for i in range(0, len(images), chunk)])


def perturbed_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor,
                      chunk: int) -> torch.Tensor:
    """[B, 2, 9] bool: whether each perturbed image is still classified right."""
    keep = removal_masks(maps.to(images.device))
    batch = len(images)
    perturbed = images[:, None, None] * keep[:, :, :, None].to(images.dtype)    # [B, 2, 9, 3, H, W]
    predicted = _classify(model, perturbed.flatten(0, 2), chunk).view(batch, 2, len(FRACTIONS))
    del perturbed, keep
    release_freed_memory()   # glibc would keep this map's ~1-2 GB of freed blocks on its heap
    return predicted == labels.view(-1, 1, 1)


def _region_policy(scores: torch.Tensor, budget: float, highest: bool):
    """force_gates policy: finest on the `budget` share of regions with the highest
    (or lowest) mean score at each layer's region grid, coarsest elsewhere."""
    def choose(logits: torch.Tensor) -> torch.Tensor:
        batch, rows, columns, options = logits.shape
        region = F.adaptive_avg_pool2d(scores[:, None].double(), (rows, columns)).flatten(1)
        count = round(budget * rows * columns)
        order = torch.argsort(region, dim=1, descending=highest, stable=True)
        fine = torch.zeros_like(region, dtype=torch.bool)
        fine.scatter_(1, order[:, :count], True)
        choice = torch.where(fine, 0, options - 1)
        return choice.view(batch, rows, columns).to(logits.device)
    return choose


@torch.no_grad()
def router_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, maps: dict, keys,
                   budget: float) -> dict[str, list]:
    """Per image: correct with the finest granularity on the regions each map ranks
    highest and lowest, on random regions, and with the trained routers."""
    result = {"trained router": (model(images).argmax(1) == labels).tolist()}
    noise = torch.stack([torch.rand(images.shape[-2:], generator=torch.Generator().manual_seed(
        zlib.crc32(str(key).encode()))) for key in keys])
    with force_gates(model, _region_policy(noise, budget, True)):
        result["random regions"] = (model(images).argmax(1) == labels).tolist()
    for name, values in maps.items():
        for highest, label in ((True, "highest"), (False, "lowest")):
            with force_gates(model, _region_policy(values, budget, highest)):
                result[f"{name}@{label}"] = (model(images).argmax(1) == labels).tolist()
    return result


def perturb(model: nn.Module, images: str, explainers: list, out, limit: int | None = None,
            batch_size: int = 16, forward_batch: int = 64, device="cpu", workers: int = 2,
            progress: bool = True, info: dict | None = None, preprocessing: Preprocessing | None = None,
            budget: float | None = 0.5) -> dict | None:
    """Perturbation curves and AUCs of every explainer on a folder of labelled images
    (synset-named, as imagenet-sample); with a DGE model and a budget, the router
    test too.  Returns the results on rank 0."""
    if budget is not None and not 0 < budget < 1:
        raise ValueError(f"--budget must be in (0, 1), got {budget}")
    preprocessing = preprocessing or Preprocessing.of(model)
    folder = LabelledImageFolder(images, preprocessing.classification_transform())
    dataset = IdentifiedImages(folder, preprocessing.input_size)
    names = [n for e in explainers for n in e.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"the explainers name the same map twice: {names}")
    model = model.to(device).eval()
    check_input_size(model, preprocessing.input_size, device)
    routed = budget is not None and bool(dge_modules(model))
    path, half = parse_folder_spec(images)
    settings = {"images": str(path.resolve()) + (f":{half}" if half else ""), "maps": describe_maps(explainers),
                "preprocessing": preprocessing.as_dict(), "fractions": list(FRACTIONS),
                "router_budget": budget if routed else None, **(info or {})}
    specific = [e for e in explainers if getattr(e, "class_specific", True)]

    def score_batch(batch: dict) -> list[dict]:
        images_, labels = batch["image"].to(device), batch["label"].to(device)
        keys = list(batch["key"])
        with torch.no_grad():
            predicted = model(images_).argmax(1)
        maps = batch_maps(explainers, images_, keys)
        curves = {name: perturbed_correct(model, images_, labels, values, forward_batch)
                  for name, values in maps.items()}
        # the true class as the explained class: only class-specific maps of misclassified images differ
        wrong = (predicted != labels).nonzero().flatten().tolist()
        retargeted = {}
        if specific and wrong:
            again = batch_maps(specific, images_[wrong], [keys[i] for i in wrong], labels[wrong])
            retargeted = {name: perturbed_correct(model, images_[wrong], labels[wrong], values, forward_batch)
                          for name, values in again.items()}
        position = {image: n for n, image in enumerate(wrong)}
        router = router_correct(model, images_, labels, maps, keys, budget) if routed else None
        bodies = []
        for j in range(len(keys)):
            body = {"label": int(labels[j]), "predicted": int(predicted[j]), "curves": {}}
            for name, curve in curves.items():
                target = retargeted[name][position[j]] if name in retargeted and j in position else curve[j]
                body["curves"][name] = {
                    variant: {direction: values[d].tolist() for d, direction in enumerate(DIRECTIONS)}
                    for variant, values in (("predicted", curve[j]), ("target", target))}
            if router is not None:
                body["router"] = {name: values[j] for name, values in router.items()}
            bodies.append(body)
        return bodies

    return run_resumable(RunFolder(out, "perturb"), dataset, settings, limit, score_batch, write_outputs,
                         batch_size, workers, progress)


# The protocol (Chefer et al.; docs/explainers-and-protocols.md section 3): top-1 at each
# step, "the unperturbed accuracy at 0 %; AUC = trapezoidal area over the fractions x 100",
# so the area spans 0-90 % removed and a top-1 of 100 % throughout scores 90.
AUC_SPAN = f"0-{100 * FRACTIONS[-1]:.0f} % of the pixels removed"


def auc(accuracies: list[float]) -> float:
    """Trapezoidal area under top-1 (0-1) over the fractions 0, 0.1, ..., 0.9 removed
    (the unperturbed top-1 at 0), x 100."""
    if len(accuracies) != len(FRACTIONS) + 1:
        raise ValueError(f"a perturbation curve has {len(FRACTIONS) + 1} points (top-1 with "
                         f"{', '.join(f'{100 * f:.0f}' for f in (0.0, *FRACTIONS))} % of the pixels removed), "
                         f"got {len(accuracies)}")
    return 100 * float(np.trapezoid(accuracies, (0.0, *FRACTIONS)))


def summarise(records: list[dict]) -> dict:
    top1 = float(np.mean([r["label"] == r["predicted"] for r in records]))
    names = ordered_names(records[0]["curves"])
    curves, aucs = {}, {}
    for name in names:
        curves[name], aucs[name] = {}, {}
        for variant in VARIANTS:
            curves[name][variant], aucs[name][variant] = {}, {}
            for direction in DIRECTIONS:
                steps = np.mean([r["curves"][name][variant][direction] for r in records], axis=0)
                accuracies = [top1, *map(float, steps)]
                curves[name][variant][direction] = accuracies
                aucs[name][variant][direction] = auc(accuracies)
    router = None
    if "router" in records[0]:
        router = {key: float(np.mean([r["router"][key] for r in records])) for key in records[0]["router"]}
    return {"images": len(records), "top1": top1, "fractions": [0.0, *FRACTIONS], "auc": aucs, "curves": curves,
            "router": router}


def markdown_tables(summary: dict) -> str:
    lines = [f"Perturbation AUC over {AUC_SPAN} ({summary['images']} images, top-1 "
             f"{100 * summary['top1']:.1f}; negative: higher is better, positive: lower is better)", "",
             "| Method | negative, predicted | positive, predicted | negative, target | positive, target |",
             "|---|---|---|---|---|"]
    for name, by_variant in summary["auc"].items():
        cells = [f"{by_variant[v][d]:.1f}" for v in VARIANTS for d in ("negative", "positive")]
        lines.append(f"| {method_title(name)} | " + " | ".join(cells) + " |")
    router = summary["router"]
    if router:
        lines += ["", "Router test: top-1 with the finest granularity forced on the regions each map ranks "
                      "highest vs lowest (the same compute)", "", *router_table(router)]
    return "\n".join(lines)


def router_table(router: dict, first_column: str = "Method") -> list[str]:
    """The router test's Markdown rows: per map, top-1 with the finest granularity on
    its highest and on its lowest regions; random regions; the trained routers."""
    lines = [f"| {first_column} | fine where highest | fine where lowest | difference |", "|---|---|---|---|"]
    for name in ordered_names({k.rpartition("@")[0] for k in router if "@" in k}):
        high, low = router[f"{name}@highest"], router[f"{name}@lowest"]
        lines.append(f"| {method_title(name)} | {100 * high:.1f} | {100 * low:.1f} | {100 * (high - low):+.1f} |")
    lines.append(f"| random regions | {100 * router['random regions']:.1f} | | |")
    lines.append(f"| trained router (its own budget) | {100 * router['trained router']:.1f} | | |")
    return lines


def write_outputs(out: Path, records: list[dict], settings: dict, limit: int | None, failed: list[dict],
                  write: bool = True) -> dict:
    summary = summarise(records)
    if not write:
        return summary
    write_atomic(out / "results.json", json.dumps({"run": settings, **summary, "limit": limit,
                                                   "failed": failed}, indent=2))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["method", "variant", "direction", "auc", *[f"top1@{f:.1f}" for f in (0.0, *FRACTIONS)]])
    for name, by_variant in summary["curves"].items():
        for variant in VARIANTS:
            for direction in DIRECTIONS:
                writer.writerow([name, variant, direction, summary["auc"][name][variant][direction],
                                 *by_variant[variant][direction]])
    write_atomic(out / "results.csv", table.getvalue())
    write_atomic(out / "results.md", markdown_tables(summary) + "\n")
    return summary
