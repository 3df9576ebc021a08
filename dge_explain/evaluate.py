"""Score explanation maps as soft segmentations (appendix Tables 5 and 6).

For every image: one forward pass for all gating layers, GradCAM, random; each
map is scored with ``dge_explain.metrics`` and the per-image record appended to
``OUT/records/rank<r>.jsonl``.  Rerunning with the same OUT skips the images
already recorded, so an interrupted run resumes and ends with the same numbers.
Under torchrun the images are split across ranks; rank 0 merges the records in
dataset order and reduces them exactly.  Outputs: results.json, results.csv,
results.md (the paper's layout) and per_image.csv.
"""
from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dge_explain.data import canonical_spec, segmentation_dataset
from dge_explain.paths import read_json_lines
from dge_explain.explain import GatingMaps, GradCAMMaps, RandomMaps
from dge_explain.methods import parse_method
from dge_explain.metrics import ImageScore, aggregate, score_image


def build_explainers(model: nn.Module, methods: list[str], seed: int = 0) -> list:
    explainers = []
    for method in methods:
        kind, layers = parse_method(method)
        if kind in ("gating", "gating-density"):
            explainers.append(GatingMaps(model, layers, "density" if kind == "gating-density" else "fine"))
        elif kind == "gradcam":
            explainers.append(GradCAMMaps(model))
        else:
            explainers.append(RandomMaps(seed))
    names = [n for e in explainers for n in e.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"methods {methods} name the same map twice: {names}")
    return explainers


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _read_records(folder: Path) -> dict[int, dict]:
    return {record["index"]: record for path in sorted(folder.glob("rank*.jsonl"))
            for record in read_json_lines(path)}


def _score_to_list(score: ImageScore) -> list:
    return [score.correct, score.labelled, *score.intersection, *score.union, score.ap]


def _score_from_list(values: list) -> ImageScore:
    correct, labelled, i0, i1, u0, u1, ap = values
    return ImageScore(correct, labelled, (i0, i1), (u0, u1), ap)


@dataclass
class EvaluationResult:
    images: int
    methods: dict[str, dict[str, float]]   # method -> Accuracy / mAP / mIoU (percent) + IoUs


def method_title(name: str) -> str:
    if name.startswith("layer"):
        return f"Layer {name[5:]}"
    return {"gradcam": "GradCAM", "random": "Random"}.get(name, name)


def _ordered(names: list[str]) -> list[str]:
    """Random, GradCAM, then layers, as in the paper's tables."""
    rank = {"random": 0, "gradcam": 1}
    return sorted(names, key=lambda n: (rank.get(n, 2), int(n[5:]) if n.startswith("layer") else 0, n))


def write_outputs(out: Path, records: dict[int, dict], info: dict) -> EvaluationResult:
    ordered = [records[i] for i in sorted(records)]
    names = _ordered(list(ordered[0]["scores"]))
    methods = {}
    for name in names:
        total = aggregate([_score_from_list(r["scores"][name]) for r in ordered])
        methods[name] = {**total.as_percent(), "IoU background": 100 * total.iou[0],
                         "IoU foreground": 100 * total.iou[1]}
    result = EvaluationResult(len(ordered), methods)
    (out / "results.json").write_text(json.dumps({"run": info, **asdict(result)}, indent=2))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "images", "accuracy", "mAP", "mIoU", "IoU_background", "IoU_foreground"])
        for name, row in methods.items():
            writer.writerow([name, len(ordered), row["Accuracy"], row["mAP"], row["mIoU"],
                             row["IoU background"], row["IoU foreground"]])
    with (out / "per_image.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "name", "method", "pixel_accuracy", "iou_background",
                         "iou_foreground", "ap"])
        for record in ordered:
            for name in names:
                s = _score_from_list(record["scores"][name])
                iou = [s.intersection[c] / s.union[c] if s.union[c] else 0.0 for c in (0, 1)]
                writer.writerow([record["index"], record["name"], name, s.correct / s.labelled,
                                 iou[0], iou[1], s.ap])
    (out / "results.md").write_text(markdown_table(result) + "\n")
    np.savez(out / "pr_histograms.npz", **{
        name: np.sum([np.asarray(r["histograms"][name]).reshape(2, -1) for r in ordered], axis=0)
        for name in names})
    return result


def markdown_table(result: EvaluationResult) -> str:
    names = list(result.methods)
    lines = ["| Metric | " + " | ".join(method_title(n) for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for metric in ("Accuracy", "mAP", "mIoU"):
        lines.append(f"| {metric} | " + " | ".join(f"{result.methods[n][metric]:.1f}" for n in names) + " |")
    return "\n".join(lines)


def evaluate(model: nn.Module, dataset_spec: str, methods: list[str], out, limit: int | None = None,
             batch_size: int = 16, device="cpu", image_size: int = 224, seed: int = 0,
             workers: int = 2, progress: bool = True, info: dict | None = None) -> EvaluationResult:
    """Score every method's maps on the dataset; resumable, rank-aware."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    out = Path(out)
    records_dir = out / "records"
    rank, world = _rank_world()
    records_dir.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": canonical_spec(dataset_spec), "methods": list(methods),
                "image_size": image_size, "seed": seed, **(info or {})}
    _check_settings(out / "run.json", settings, rank, world)
    dataset = segmentation_dataset(dataset_spec, image_size)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    done = _read_records(records_dir)
    if world > 1:  # every rank has read (and mended) the record files before any appends
        dist.barrier()
    mine = [i for i in range(count) if i % world == rank and i not in done]
    model = model.to(device).eval()
    explainers = build_explainers(model, methods, seed)

    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=workers)
    already = sum(1 for i in done if i < count)
    with ThreadPoolExecutor(torch.get_num_threads()) as scorer, \
            (records_dir / f"rank{rank}.jsonl").open("a") as sink, \
            tqdm(total=count, initial=already, desc="evaluating",
                 disable=not progress or rank != 0) as bar:
        for images, masks, indices, names in loader:
            images = images.to(device)
            maps = batch_maps(explainers, images, indices.tolist())
            # numpy's sorts release the GIL: the images are scored on all cores.
            records = scorer.map(_record, indices.tolist(), names, masks.numpy(),
                                 [{name: m[j].numpy() for name, m in maps.items()} for j in range(len(names))])
            for record in records:
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(min(len(indices) * world, bar.total - bar.n))  # rank 0 speaks for all
    if world > 1:
        dist.barrier()
    if rank != 0:
        return None
    records = {i: r for i, r in _read_records(records_dir).items() if i < count}
    missing = sorted(set(range(count)) - set(records))
    if missing:
        raise RuntimeError(f"records of images {missing[:10]} are missing from {records_dir}")
    return write_outputs(out, records, settings)


def batch_maps(explainers: list, images: torch.Tensor, indices: list[int]) -> dict[str, torch.Tensor]:
    """Every explainer's maps of one batch, on the CPU.  With GradCAM present the
    gating maps are read from the routers during GradCAM's forward pass (eval
    mode, the same logits) instead of a forward of their own."""
    carrier = next((e for e in explainers if isinstance(e, GradCAMMaps)), None)
    riders = [e for e in explainers if isinstance(e, GatingMaps)] if carrier is not None else []
    maps = {}
    with ExitStack() as stack:
        captured = [stack.enter_context(rider.capturing()) for rider in riders]
        maps.update(carrier(images, indices) if carrier is not None else {})
    for rider, logits in zip(riders, captured):
        maps.update(rider.maps_from(logits, images.shape[-2:]))
    for explainer in explainers:
        if explainer is not carrier and explainer not in riders:
            maps.update(explainer(images, indices))
    return {name: m.detach().cpu() for name, m in maps.items()}


def _record(index: int, name: str, mask: np.ndarray, maps: dict[str, np.ndarray]) -> dict:
    """Scores and histograms of every method's map of one image."""
    scored = {method: score_image(m, mask, with_histogram=True) for method, m in maps.items()}
    return {"index": index, "name": name,
            "scores": {method: _score_to_list(score) for method, (score, _) in scored.items()},
            "histograms": {method: hist.ravel().tolist() for method, (_, hist) in scored.items()}}


def _check_settings(path: Path, settings: dict, rank: int, world: int) -> None:
    """The first run of an output folder records its settings (rank 0, atomically);
    a resumed run must match them."""
    if rank == 0 and not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(settings, indent=2))
        partial.replace(path)
    if world > 1:
        dist.barrier()
    previous = json.loads(path.read_text())
    changed = {k: (previous.get(k), settings.get(k)) for k in sorted(set(settings) | set(previous))
               if previous.get(k) != settings.get(k)}
    if changed:
        raise ValueError(f"{path.parent} holds a run with other settings {changed}; use another --out")
