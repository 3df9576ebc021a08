"""Score explanation maps as soft segmentations (appendix Tables 5 and 6).

For every batch: every explainer's maps (``dge_explain.explain.batch_maps``: one
pass per family of explainers, the gating maps riding along), then every map
scored by one compiled call per method (``dge_explain.metrics``); one record per
image is appended to
``OUT/records/rank<r>.jsonl``, keyed by the image's identity (``dge_explain.runs``).
Rerunning with the same OUT resumes: images already scored are skipped, new or
changed ones are scored.  Under torchrun the images are split across ranks; rank
0 reduces the records of the current listing exactly, in dataset order.
Outputs: results.json, results.csv, results.md (the paper's layout),
per_image.csv and pr_histograms.npz.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dge_explain.data import Preprocessing, canonical_spec, segmentation_dataset
from dge_explain.data.segmentation import MASK_ISSUES
from dge_explain.explain import batch_maps
from dge_explain.metrics import ImageScore, aggregate, score_maps
from dge_explain.models.families import check_image_size, find_adapter, model_name
from dge_explain.runs import RunFolder, run_resumable, say


def methods_of_run(settings: dict) -> list[str]:
    """Method names that rebuild the explainers of a run's settings ("maps")."""
    layers: dict[str, list[int]] = {}
    methods = []
    for config in settings["maps"].values():
        if config["method"] == "gating":
            kind = "gating" if config["score"] == "fine" else f"gating-{config['score']}"
            layers.setdefault(kind, []).append(config["layer"])
        else:
            methods.append(config["method"])
    return sorted(set(methods)) + [f"{kind}:{','.join(map(str, sorted(ls)))}" for kind, ls in sorted(layers.items())]


@dataclass
class EvaluationResult:
    images: int
    methods: dict[str, dict[str, float]]   # method -> Accuracy / mAP / mIoU (percent) + IoUs


TITLES = {"random": "Random", "attention": "Raw attention", "rollout": "Rollout",
          "attention-gradcam": "Attention GradCAM", "relevance": "Relevance", "gradcam": "GradCAM",
          "gradcam++": "GradCAM++", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "hirescam": "HiResCAM",
          "gradcam-elementwise": "GradCAM (element-wise)", "eigencam": "EigenCAM",
          "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


GATING_NAME = re.compile(r"^layer(\d+)(?:-(\w+))?$")


def gating_layer(name: str) -> tuple[int, str] | None:
    """'layer8' -> (8, ''), 'layer8-margin' -> (8, 'margin'); None for other maps."""
    match = GATING_NAME.match(name)
    return (int(match.group(1)), match.group(2) or "") if match else None


def method_title(name: str) -> str:
    gating = gating_layer(name)
    if gating:
        return f"Layer {gating[0]}" + (f" ({gating[1]})" if gating[1] else "")
    return TITLES.get(name, name)


def ordered_names(names) -> list[str]:
    """Random, the attention baselines, the CAMs, then gating layers (p_fine, margin,
    density): the paper's tables put random first and the layers last."""
    rank = {name: i for i, name in enumerate(TITLES)}
    scores = {"": 0, "margin": 1, "density": 2}

    def key(name):
        gating = gating_layer(name)
        if gating:
            return (1, scores.get(gating[1], 3), gating[0], name)
        return (0, rank.get(name, len(rank)), 0, name)

    return sorted(names, key=key)


def _mask_issues(records: list[dict]) -> dict[str, dict]:
    issues: dict[str, list[str]] = {}
    for record in records:
        for issue in filter(None, record["mask_issue"].split(",")):
            issues.setdefault(issue, []).append(record["key"])
    return {issue: {"count": len(keys), "images": keys[:20]} for issue, keys in sorted(issues.items())}


def write_outputs(out: Path, ordered: list[dict], info: dict, limit: int | None) -> EvaluationResult:
    names = ordered_names(ordered[0]["scores"])
    methods = {}
    for name in names:
        total = aggregate([ImageScore.from_record(r["scores"][name]) for r in ordered])
        methods[name] = {**total.as_percent(), "IoU background": 100 * total.iou[0],
                         "IoU foreground": 100 * total.iou[1]}
    result = EvaluationResult(len(ordered), methods)
    (out / "results.json").write_text(json.dumps(
        {"run": info, **asdict(result), "limit": limit, "mask_issues": _mask_issues(ordered)}, indent=2))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "images", "accuracy", "mAP", "mIoU", "IoU_background", "IoU_foreground"])
        for name, row in methods.items():
            writer.writerow([name, len(ordered), row["Accuracy"], row["mAP"], row["mIoU"],
                             row["IoU background"], row["IoU foreground"]])
    with (out / "per_image.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["position", "image", "method", "pixel_accuracy", "iou_background",
                         "iou_foreground", "ap", "mask_issue"])
        for position, record in enumerate(ordered):
            for name in names:
                s = ImageScore.from_record(record["scores"][name])
                iou = [s.intersection[c] / s.union[c] if s.union[c] else 0.0 for c in (0, 1)]
                writer.writerow([position, record["key"], name, s.correct / s.labelled, iou[0], iou[1], s.ap,
                                 record["mask_issue"]])
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
            issue = batch["mask_issue"][j]
            if issue:
                what = "; ".join(MASK_ISSUES[i] for i in issue.split(","))
                say(f"warning: the mask of {dataset.describe(int(batch['index'][j]))} is {what}")
            bodies.append({"mask_issue": issue,
                           "scores": {name: values[j][0].to_record() for name, values in scored.items()},
                           "histograms": {name: values[j][1].ravel().tolist() for name, values in scored.items()}})
        return bodies

    return run_resumable(RunFolder(out, "evaluate"), dataset, settings, limit, score_batch, write_outputs,
                         batch_size, workers, progress)


def describe_maps(explainers: list) -> dict[str, dict]:
    """The settings of every map, by name, in name order (so that the same set of
    maps compares equal however it was asked for)."""
    return dict(sorted((name, config) for e in explainers for name, config in e.describe().items()))
