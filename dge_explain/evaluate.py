"""Score explanation maps as soft segmentations (appendix Tables 5 and 6).

For every batch: one forward pass for all gating layers (GradCAM's forward when
it is evaluated too), the random maps, then every map scored by one compiled
call per method (``dge_explain.metrics``); one record per image is appended to
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
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dge_explain.data import Preprocessing, canonical_spec, segmentation_dataset
from dge_explain.data.segmentation import MASK_ISSUES
from dge_explain.explain import batch_maps
from dge_explain.metrics import ImageScore, aggregate, score_maps
from dge_explain.runs import RunError, RunFolder, match_records


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


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class EvaluationResult:
    images: int
    methods: dict[str, dict[str, float]]   # method -> Accuracy / mAP / mIoU (percent) + IoUs


TITLES = {"random": "Random", "attention": "Raw attention", "rollout": "Rollout",
          "attention-gradcam": "Attention GradCAM", "relevance": "Relevance", "gradcam": "GradCAM",
          "gradcam++": "GradCAM++", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "hirescam": "HiResCAM",
          "gradcam-elementwise": "GradCAM (element-wise)", "eigencam": "EigenCAM",
          "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


def method_title(name: str) -> str:
    if name.startswith("layer"):
        layer, _, score = name[5:].partition("-")
        return f"Layer {layer}" + (f" ({score})" if score else "")
    return TITLES.get(name, name)


def ordered_names(names) -> list[str]:
    """Random, the attention baselines, the CAMs, then gating layers (p_fine, margin,
    density): the paper's tables put random first and the layers last."""
    rank = {name: i for i, name in enumerate(TITLES)}
    scores = {"": 0, "margin": 1, "density": 2}

    def key(name):
        if name.startswith("layer"):
            layer, _, score = name[5:].partition("-")
            return (1, scores.get(score, 3), int(layer), name)
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
    """A forward pass of one blank image: a size the model cannot take is refused
    before the run folder is touched."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    except (ValueError, RuntimeError, AssertionError) as error:
        raise ValueError(f"image size {size}x{size} does not fit {type(model).__name__}: {error}") from None


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def evaluate(model: nn.Module, dataset_spec: str, explainers: list, out, limit: int | None = None,
             batch_size: int = 16, device="cpu", workers: int = 2, progress: bool = True,
             info: dict | None = None, preprocessing: Preprocessing | None = None) -> EvaluationResult | None:
    """Score every explainer's maps on the dataset; resumable, rank-aware.

    preprocessing: the protocol's input (default: the model's mean and std, the
    whole image resized bilinearly to its input size; Preprocessing.for_segmentation)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    preprocessing = preprocessing or Preprocessing.of(model).for_segmentation()
    dataset = segmentation_dataset(dataset_spec, preprocessing)
    names = [n for e in explainers for n in e.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"the explainers name the same map twice: {names}")
    model = model.to(device).eval()
    check_input_size(model, preprocessing.input_size, device)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    run = RunFolder(out, "evaluate")
    rank, world = _rank_world()
    settings = {"dataset": canonical_spec(dataset_spec), "maps": dict(sorted(
        (name, config) for e in explainers for name, config in e.describe().items())),
                "preprocessing": preprocessing.as_dict(), **(info or {})}
    with run.locked() if rank == 0 else nullcontext():
        if rank == 0:
            _refuse_smaller_limit(run.out, limit, count)
            run.start(settings)
        if world > 1:  # the settings are checked before any rank reads or appends records
            dist.barrier()
        done, changed, removed = match_records(dataset, count, run.records())
        if world > 1:  # every rank has read (and mended) the record files before any appends
            dist.barrier()
        if rank == 0:
            for key in changed[:10]:
                _say(f"{key} changed since it was scored: scoring it again")
            if len(changed) > 10:
                _say(f"... and {len(changed) - 10} more changed images")
            if removed:
                _say(f"{len(removed)} scored image(s) are no longer in the dataset and are left out of "
                     f"the results: {', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}")
        mine = [i for i in range(count) if i % world == rank and i not in done]
        _score(dataset, explainers, run, rank, world, mine, count, len(done), batch_size, device,
               workers, progress)
        if world > 1:
            dist.barrier()
        if rank != 0:
            return None
        done, changed, _ = match_records(dataset, count, run.records())
        missing = [dataset.keys()[i] for i in range(count) if i not in done]
        if missing:
            raise RuntimeError(f"records of images {missing[:10]} are missing from {run.records_dir}")
        return write_outputs(run.out, [done[i] for i in range(count)], {"format": 2, **settings}, limit)


def _refuse_smaller_limit(out: Path, limit: int | None, count: int) -> None:
    results = out / "results.json"
    if limit is None or not results.exists():
        return
    previous = json.loads(results.read_text()).get("images", 0)
    if count < previous:
        raise RunError(f"{out} holds the results of {previous} images; --limit {limit} would replace them "
                       f"with those of {count}: choose another --out, or a --limit of at least {previous}")


def _score(dataset, explainers, run: RunFolder, rank: int, world: int, mine: list[int], count: int,
           already: int, batch_size: int, device, workers: int, progress: bool) -> None:
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=workers)
    with run.sink(rank) as sink, tqdm(total=count, initial=already, desc="evaluating",
                                      disable=not progress or rank != 0) as bar:
        for batch in loader:
            failed = [message for message in batch["error"] if message]
            if failed:
                raise RunError(f"{failed[0]}; the images scored so far are kept in {run.records_dir}: fix "
                               "or remove the file and rerun to resume")
            images = batch["image"].to(device)
            maps = batch_maps(explainers, images, batch["key"])
            masks = batch["mask"]
            scored = {name: score_maps(values, masks) for name, values in maps.items()}
            for j, key in enumerate(batch["key"]):
                issue = batch["mask_issue"][j]
                if issue:
                    what = "; ".join(MASK_ISSUES[i] for i in issue.split(","))
                    _say(f"warning: the mask of {dataset.describe(int(batch['index'][j]))} is {what}")
                record = {"format": 2, "key": key, "stat": batch["stat"][j].tolist(),
                          "digest": batch["digest"][j], "mask_issue": issue,
                          "scores": {name: values[j][0].to_record() for name, values in scored.items()},
                          "histograms": {name: values[j][1].ravel().tolist() for name, values in scored.items()}}
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(min(len(batch["key"]) * world, bar.total - bar.n))  # rank 0 speaks for all
