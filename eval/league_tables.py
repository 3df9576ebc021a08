"""The README's league tables from the run folders of eval/league.sh: segmentation
(accuracy / mAP / mIoU) and perturbation AUCs, the DGE model beside its dense
teacher, one row per method (ScoreCAM from its own, shorter runs).

    .venv/bin/python eval/league_tables.py [--runs runs] > league.md
"""
import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

from dge_explain.evaluation import perturbation as perturb
from dge_explain.evaluation.report import method_title, ordered_names
from dge_explain.evaluation.metrics import ImageScore, aggregate
from dge_explain.evaluation.runs import RunFolder


def _load(folder: Path) -> dict | None:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def _merged(runs: Path, kind: str, model: str) -> tuple[dict, dict]:
    """(method -> result row, method -> number of images) over the main run and the ScoreCAM run."""
    rows, images = {}, {}
    for suffix in ("", "-scorecam"):
        results = _load(runs / f"league-{kind}-{model}{suffix}")
        if results is None:
            continue
        table = results["methods"] if kind == "ecssd" else results["auc"]
        for name, row in table.items():
            rows[name], images[name] = row, results["images"]
    return rows, images


def segmentation_table(runs: Path) -> str:
    dge, dge_images = _merged(runs, "ecssd", "dge")
    dense, dense_images = _merged(runs, "ecssd", "dense")
    lines = ["| Method | DGE-DeiT-Ti Accuracy | mAP | mIoU | DeiT-Ti Accuracy | mAP | mIoU |",
             "|---|---|---|---|---|---|---|"]
    for name in ordered_names(set(dge) | set(dense)):
        cells = []
        for rows in (dge, dense):
            row = rows.get(name)
            cells += [f"{row[m]:.1f}" for m in ("Accuracy", "mAP", "mIoU")] if row else ["", "", ""]
        counts = {dge_images.get(name), dense_images.get(name)} - {None}
        note = "" if counts <= {1000} else f" ({'/'.join(str(c) for c in sorted(counts))} images)"
        lines.append(f"| {method_title(name)}{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_images(folder: Path, count: int) -> dict[str, dict[str, float]]:
    """Every method's scores over the first `count` images of a finished evaluation
    run (to set a shorter run, such as ScoreCAM's, beside the others)."""
    with (folder / "per_image.csv").open() as handle:
        keys = list(dict.fromkeys(row["image"] for row in csv.DictReader(handle)))[:count]
    records = RunFolder(folder, "evaluate").records()
    chosen = [records[key][-1] for key in keys]
    return {name: aggregate([ImageScore.from_record(r["scores"][name]) for r in chosen]).as_percent()
            for name in chosen[0]["scores"]}


def scorecam_comparison(runs: Path) -> str:
    """ScoreCAM's subset beside the best maps of the main run on the same images."""
    lines = []
    for model in ("dge", "dense"):
        scorecam = _load(runs / f"league-ecssd-{model}-scorecam")
        if scorecam is None or not (runs / f"league-ecssd-{model}").exists():
            continue
        if not (runs / f"league-ecssd-{model}" / "per_image.csv").exists():  # a results-only copy
            lines.append(f"{model}: needs the per-image records of {runs}/league-ecssd-{model} "
                         "(LEAGUE_PARTS=ecssd eval/league.sh)")
            continue
        subset = first_images(runs / f"league-ecssd-{model}", scorecam["images"])
        subset["scorecam"] = scorecam["methods"]["scorecam"]
        names = [n for n in ordered_names(subset) if n in ("scorecam", "relevance", "gradcam-elementwise", "layer8")]
        lines.append(f"{model}, first {scorecam['images']} images: " + "; ".join(
            f"{method_title(n)} {subset[n]['Accuracy']:.1f} / {subset[n]['mAP']:.1f} / {subset[n]['mIoU']:.1f}"
            for n in names))
    return "\n\n".join(lines)


def perturbation_table(runs: Path) -> str:
    dge, dge_images = _merged(runs, "perturb", "dge")
    dense, dense_images = _merged(runs, "perturb", "dense")
    if not dge_images and not dense_images:
        return ""
    usual = Counter([*dge_images.values(), *dense_images.values()]).most_common(1)[0][0]
    lines = ["| Method | DGE neg. ↑ | DGE pos. ↓ | DGE neg. target ↑ | DGE pos. target ↓ "
             "| dense neg. ↑ | dense pos. ↓ | dense neg. target ↑ | dense pos. target ↓ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ordered_names(set(dge) | set(dense)):
        cells = []
        for rows in (dge, dense):
            row = rows.get(name)
            cells += [f"{row[v][d]:.1f}" for v in ("predicted", "target") for d in ("negative", "positive")] \
                if row else [""] * 4
        counts = {dge_images.get(name), dense_images.get(name)} - {None}
        note = "" if counts <= {usual} else f" ({'/'.join(str(c) for c in sorted(counts))} images)"
        lines.append(f"| {method_title(name)}{note} | " + " | ".join(cells) + " |")
    return f"{usual} images unless a row says otherwise\n\n" + "\n".join(lines)


def router_table(runs: Path) -> str:
    results = _load(runs / "league-perturb-dge")
    if results is None or not results.get("router"):
        return ""
    title = f"Map ({results['images']} images, budget {results['run']['router_budget']})"
    return "\n".join(perturb.router_table(results["router"], title))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="folder holding the league-* run folders")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    for title, table in (("Segmentation, ECSSD", segmentation_table(runs)),
                         ("ScoreCAM beside other maps on its images", scorecam_comparison(runs)),
                         ("Perturbation AUC, imagenet-sample", perturbation_table(runs)),
                         ("Router test", router_table(runs))):
        print(f"### {title}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
