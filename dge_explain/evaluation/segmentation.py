"""Score explanation maps as soft segmentations (appendix Tables 5 and 6).

For every batch: every explainer's maps (``dge_explain.explainers.batch_maps``: one
pass per family of explainers, the gating maps riding along), then every map
scored by one compiled call per method (``dge_explain.evaluation.metrics``); one record per
image is appended to
``OUT/records/rank<r>.jsonl``, keyed by the image's identity (``dge_explain.evaluation.runs``).
Rerunning with the same OUT resumes: images already scored are skipped, new or
changed ones are scored.  Under torchrun the images are split across ranks; rank
0 reduces the records of the current listing exactly, in dataset order.
Outputs: results.json, results.csv, results.md (the paper's layout),
per_image.csv and pr_histograms.npz.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dge_explain.data import Preprocessing, canonical_spec, segmentation_dataset
from dge_explain.data.segmentation import MASK_ISSUES
from dge_explain.explainers import batch_maps, describe_maps
from dge_explain.models.families import check_image_size, find_adapter, model_name
from dge_explain.evaluation.metrics import ImageScore, aggregate, score_maps
from dge_explain.evaluation.report import markdown_table, ordered_names
from dge_explain.console import say
from dge_explain.evaluation.loop import run_resumable
from dge_explain.evaluation.runs import RunFolder, write_atomic


@dataclass
class EvaluationResult:
    images: int
    methods: dict[str, dict[str, float]]   # method -> Accuracy / mAP / mIoU (percent) + IoUs


def _mask_issues(records: list[dict]) -> dict[str, dict]:
    """Per kind of suspicious mask: how many, and the keys of their images (all)."""
    issues: dict[str, list[str]] = {}
    for record in records:
        for issue in filter(None, record["mask_issue"].split(",")):
            issues.setdefault(issue, []).append(record["key"])
    return {issue: {"count": len(keys), "images": keys} for issue, keys in sorted(issues.items())}


def warn_mask_issues(issues: dict[str, dict], threshold: int) -> None:
    """One line per kind of suspicious mask, for the whole run (not one per image)."""
    for issue, found in issues.items():
        count, keys = found["count"], found["images"]
        what = MASK_ISSUES[issue]
        if issue == "non-binary":
            what += f"; foreground = grey level >= {threshold} (--mask-threshold)"
        named = ", ".join(keys[:5]) + (f" and {count - 5} more (all in results.json, mask_issues)"
                                       if count > 5 else "")
        say(f"warning: {count} mask{'s are' if count > 1 else ' is'} {what}; their images: {named}")


def write_outputs(out: Path, ordered: list[dict], info: dict, limit: int | None, failed: list[dict],
                  write: bool = True) -> EvaluationResult:
    """The results of the records (one per scored image, in dataset order), written
    (each file atomically) unless `write` is False."""
    names = ordered_names(ordered[0]["scores"])
    methods = {}
    for name in names:
        total = aggregate([ImageScore.from_record(r["scores"][name]) for r in ordered])
        methods[name] = {**total.as_percent(), "IoU background": 100 * total.iou[0],
                         "IoU foreground": 100 * total.iou[1]}
    result = EvaluationResult(len(ordered), methods)
    issues = _mask_issues(ordered)
    warn_mask_issues(issues, info["preprocessing"]["mask_threshold"])
    if not write:
        return result
    write_atomic(out / "results.json", json.dumps(
        {"run": info, **asdict(result), "limit": limit, "mask_issues": issues, "failed": failed}, indent=2))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["method", "images", "accuracy", "mAP", "mIoU", "IoU_background", "IoU_foreground"])
    for name, row in methods.items():
        writer.writerow([name, len(ordered), row["Accuracy"], row["mAP"], row["mIoU"],
                         row["IoU background"], row["IoU foreground"]])
    write_atomic(out / "results.csv", table.getvalue())
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["position", "image", "method", "pixel_accuracy", "iou_background",
                     "iou_foreground", "ap", "mask_issue"])
    for position, record in enumerate(ordered):
        for name in names:
            s = ImageScore.from_record(record["scores"][name])
            iou = [s.intersection[c] / s.union[c] if s.union[c] else 0.0 for c in (0, 1)]
            writer.writerow([position, record["key"], name, s.correct / s.labelled, iou[0], iou[1], s.ap,
                             record["mask_issue"]])
    write_atomic(out / "per_image.csv", table.getvalue())
    write_atomic(out / "results.md", markdown_table(result) + "\n")
    histograms = io.BytesIO()
    np.savez(histograms, **{name: np.sum([np.asarray(r["histograms"][name]).reshape(2, -1) for r in ordered],
                                         axis=0) for name in names})
    write_atomic(out / "pr_histograms.npz", histograms.getvalue())
    return result


def check_input_size(model: nn.Module, size: int, device) -> None:
    """A size the model cannot take is refused before the run folder is touched: by
    its family's rule, without the blank-image forward that took 0.3-2 s (DGE
    DeiT-Tiny to -Base, one CPU thread); a model of no known family by that forward."""
    if find_adapter(model) is not None:
        check_image_size(model, (size, size))
        return
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    except (ValueError, RuntimeError, AssertionError) as error:
        raise ValueError(f"input {size}x{size} does not fit {model_name(model)}: {error}") from None


def evaluate(model: nn.Module, dataset_spec: str, explainers: list, out, limit: int | None = None,
             batch_size: int = 16, device="cpu", workers: int = 2, progress: bool = True,
             info: dict | None = None, preprocessing: Preprocessing | None = None) -> EvaluationResult | None:
    """Score every explainer's maps on the dataset; resumable, rank-aware.

    preprocessing: the protocol's input (default: the model's mean and std, the
    whole image resized bilinearly to its input size; Preprocessing.for_segmentation)."""
    preprocessing = preprocessing or Preprocessing.of(model).for_segmentation()
    dataset = segmentation_dataset(dataset_spec, preprocessing)
    names = [n for e in explainers for n in e.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"the explainers name the same map twice: {names}")
    model = model.to(device).eval()
    check_input_size(model, preprocessing.input_size, device)
    settings = {"dataset": canonical_spec(dataset_spec), "maps": describe_maps(explainers),
                "preprocessing": preprocessing.as_dict(), **(info or {})}

    def score_batch(batch: dict) -> list[dict]:
        maps = batch_maps(explainers, batch["image"].to(device), batch["key"])
        scored = {name: score_maps(values, batch["mask"]) for name, values in maps.items()}
        bodies = []
        for j in range(len(batch["key"])):
            bodies.append({"mask_issue": batch["mask_issue"][j],
                           "scores": {name: values[j][0].to_record() for name, values in scored.items()},
                           "histograms": {name: values[j][1].ravel().tolist() for name, values in scored.items()}})
        return bodies

    return run_resumable(RunFolder(out, "evaluate"), dataset, settings, limit, score_batch, write_outputs,
                         batch_size, workers, progress)
