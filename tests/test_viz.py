"""Overlays put the right colours on the right pixels; figures are written,
not blank, with their labels and legends."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dge_explain.data.annotations import CocoInstances, coco_json_from_yolo, read_label_map, yolo_instances
from dge_explain.viz.figures import (budget_figure, instance_grid, map_grid, perturbation_figure, pr_figure,
                                 runtime_figure, save, semantic_grid)
from dge_explain.viz import (ADE20K_CLASSES, Instance, draw_granularity, draw_instances,
                             heatmap_overlay, mask_contours, semantic_overlay, voc_palette)

GREY = np.full((40, 60, 3), 128, dtype=np.uint8)


def test_box_and_mask_colour_the_right_pixels():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 30:50] = True
    out = draw_instances(GREY, [Instance((30, 10, 49, 19), "dog", 0.9, mask)],
                         colors=np.array([[255, 0, 0]]), alpha=0.5)
    inside = out[14, 40].astype(int)
    assert inside[0] > 180 and inside[1] < 100 and inside[2] < 100       # red tint over the mask
    assert tuple(out[19, 45]) == (255, 0, 0)                              # bottom box edge
    assert tuple(out[35, 5]) == (128, 128, 128)                           # far away: untouched
    labelled = draw_instances(GREY, [Instance((30, 20, 49, 39), "dog", 0.9)], colors=np.array([[255, 0, 0]]))
    assert (labelled[8:20, 30:45] != 128).any(), "the class label is drawn above the box"


def test_heatmap_overlay_and_contours():
    heat = np.zeros((4, 6))
    heat[:, 3:] = 1.0
    out = heatmap_overlay(GREY, heat, alpha=1.0)
    assert out[20, 55, 0] > 100 and out[20, 55, 2] < 60      # hot: red in the jet colour map
    assert out[20, 5, 2] > 100 and out[20, 5, 0] < 60        # cold: blue
    mask = np.zeros((40, 60))
    mask[10:30, 10:30] = 1
    outlined = mask_contours(GREY, mask, color=(0, 255, 0), thickness=1)
    assert tuple(outlined[10, 20]) == (0, 255, 0) and tuple(outlined[20, 20]) == (128, 128, 128)


def test_granularity_grid_draws_sub_patch_borders():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    out = draw_granularity(image, np.array([[0, 1], [1, 1]]), (2, 1), region_size=2, patch=16, tint=0)
    assert out[16, 5].any() and out[5, 15].any()        # finest region: split into 2x2 cells
    assert not out[48, 40].any()                        # coarse region: no inner border
    with pytest.raises(ValueError, match="does not fit the image"):
        draw_granularity(image, np.zeros((3, 3), dtype=int), (2, 1), 2, 16)


def test_semantic_overlay_palette_and_legend():
    labels = np.full((40, 60), 255)
    labels[:20] = 3
    out, legend = semantic_overlay(GREY, labels, "voc", alpha=1.0)
    assert tuple(out[5, 5]) == tuple(voc_palette(21)[3]) and tuple(out[30, 5]) == (128, 128, 128)
    assert legend == [("bird", tuple(int(v) for v in voc_palette(21)[3]))]
    _, legend = semantic_overlay(GREY, np.zeros((40, 60), dtype=int), "ade20k")
    assert legend[0][0] == ADE20K_CLASSES[0] == "wall" and len(ADE20K_CLASSES) == 150
    with pytest.raises(ValueError, match="exceed the palette of 21 classes"):
        semantic_overlay(GREY, np.full((40, 60), 40), "voc")


def _not_blank(path):
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return pixels.std() > 5 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_figures_are_written_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.pad(np.ones((20, 20), dtype=bool), ((14, 14), (22, 22))) for _ in range(2)]
    maps = {"gradcam": [rng.random((48, 64)) for _ in range(2)], "layer3": [rng.random((48, 64)) for _ in range(2)]}
    figure = map_grid(images, masks, maps, notes=[{"gradcam": "mIoU 41"}, {}])
    titles = [axis.get_title() for axis in figure.axes[:4]]
    assert titles == ["image", "mask", "GradCAM", "Layer 3"]
    assert any(t.get_text() == "mIoU 41" for axis in figure.axes for t in axis.texts)
    paths = save(figure, tmp_path / "maps", dpi=80)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 10_000 for p in paths)
    assert _not_blank(paths[0])

    box = Instance((5, 5, 30, 30), "cat", 0.8, None)
    figure = instance_grid(images, {"ground truth": [[box], []], "model A": [[], [box]]})
    assert [axis.get_ylabel() for axis in figure.axes[::2]] == ["ground truth", "model A"]
    assert _not_blank(save(figure, tmp_path / "instances", dpi=80)[0])

    figure = instance_grid(images, {"PVT-S": [[box], []], "PVT-S + DGE": [[], [box]]}, side_by_side=True)
    axes = np.array(figure.axes).reshape(2, 2)   # rows: images; columns: backbones
    assert [axis.get_title() for axis in axes[0]] == ["PVT-S", "PVT-S + DGE"]
    assert axes[0, 0].images[0].get_array()[box.box[1], box.box[0]].tolist() != \
        axes[0, 1].images[0].get_array()[box.box[1], box.box[0]].tolist()  # image 0's box: A only

    labels = [np.where(m, 15, 0) for m in masks]
    figure = semantic_grid(images, {"model": labels}, "voc")
    assert sorted(t.get_text() for t in figure.legends[0].get_texts()) == ["background", "person"]
    assert [axis.get_ylabel() for axis in figure.axes[::2]] == ["image", "model"]
    assert _not_blank(save(figure, tmp_path / "semantic", dpi=80)[0])
    figure = semantic_grid(images, {"A": labels, "B": [np.zeros_like(m) for m in labels]}, "voc", side_by_side=True)
    assert len(figure.axes) == 6 and [a.get_title() for a in figure.axes[:3]] == ["image", "A", "B"]
    assert _not_blank(save(figure, tmp_path / "semantic-side", dpi=80)[0])

    histogram = np.stack([np.linspace(0, 9, 100), np.linspace(9, 0, 100)])
    figure = pr_figure({"random": np.ones((2, 100)), "layer8": histogram})
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["Random", "Layer 8"]
    assert _not_blank(save(figure, tmp_path / "pr", dpi=80)[0])


def test_perturbation_figure_panels_lines_and_one_legend(tmp_path):
    curve = {v: {"positive": [0.8] + [0.8 - 0.08 * i for i in range(1, 10)], "negative": [0.8] * 10}
             for v in ("predicted", "target")}
    summary = {"fractions": [0.0, *(i / 10 for i in range(1, 10))], "curves": {"random": curve, "layer8": curve}}
    figure = perturbation_figure(summary)
    assert [axis.get_title() for axis in figure.axes] == [
        "positive (lower AUC is better), predicted class", "negative (higher AUC is better), predicted class",
        "positive (lower AUC is better), target class", "negative (higher AUC is better), target class"]
    assert all(len(axis.lines) == 2 for axis in figure.axes)
    assert list(figure.axes[0].lines[0].get_ydata()) == pytest.approx([80] + [80 - 8 * i for i in range(1, 10)])
    assert list(figure.axes[0].lines[0].get_xdata()) == summary["fractions"]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["Random", "Layer 8"]
    assert _not_blank(save(figure, tmp_path / "perturbation", dpi=80)[0])


def test_runtime_figure_panels_and_speedups(tmp_path):
    cases = [dict(model="deit_tiny", resolution=r, batch=1, device=d, dense_ms=10.0 * r / 224,
                  dge_ms=6.0 * r / 224) for r in (224, 448) for d in ("cpu", "cuda")]
    figure = runtime_figure({"cases": cases, "environment": {"cpu": "test CPU", "threads": 2, "gpu": "test GPU"}})
    assert [axis.get_title() for axis in figure.axes] == ["CPU: test CPU, 2 threads", "CUDA: test GPU"]
    assert {t.get_text() for t in figure.axes[0].texts} == {"1.67x"}
    assert _not_blank(save(figure, tmp_path / "runtime", dpi=80)[0])


def test_budget_figure_points_and_labels(tmp_path):
    points = {"γ 0.4": {"ratio": 0.55, "top1": 0.77}, "γ 0.6": {"ratio": 0.66, "top1": 0.79}}
    figure = budget_figure(points, dense_top1=0.80)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.texts] == ["γ 0.4", "γ 0.6"]
    assert list(axis.lines[0].get_xdata()) == [0.55, 0.66] and list(axis.lines[1].get_ydata()) == [80.0]
    assert _not_blank(save(figure, tmp_path / "budget", dpi=80)[0])


def test_yolo_and_coco_annotations(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "a.jpg")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("16 0.1 0.2 0.5 0.2 0.5 0.8 0.1 0.8\n79 0.6 0.1 0.9 0.1 0.9 0.4\n")
    dog, toothbrush = yolo_instances(labels / "a.txt", 100, 50)
    assert dog.label == "dog" and dog.mask[25, 30] and not dog.mask[5, 80]
    assert dog.box == pytest.approx((10, 10, 50, 40)) and toothbrush.label == "toothbrush"
    annotations = coco_json_from_yolo([tmp_path / "a.jpg"], labels, tmp_path / "ann.json")
    written = json.loads(annotations.read_text())
    # COCO's own category ids (1-90 with gaps): dog is 18, toothbrush 90
    assert [a["category_id"] for a in written["annotations"]] == [18, 90]
    assert len(written["categories"]) == 80 and written["categories"][11] == {"id": 13, "name": "stop sign"}
    results = tmp_path / "results.json"
    # a detector's results in COCO's ids: 17 is cat, 18 dog, 1 person
    results.write_text(json.dumps([{"image_id": 1, "category_id": 18, "bbox": [10, 10, 40, 30], "score": 0.7},
                                   {"image_id": 1, "category_id": 17, "bbox": [60, 5, 30, 15], "score": 0.6},
                                   {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}]))
    coco = CocoInstances(annotations, results)
    truth = coco.instances(coco.image_id("a.jpg"))
    assert [t.label for t in truth] == ["dog", "toothbrush"] and np.array_equal(truth[0].mask, dog.mask)
    predictions = coco.instances(1, predictions=True, min_score=0.5)
    assert [(p.label, p.score) for p in predictions] == [("dog", 0.7), ("cat", 0.6)]
    custom = json.loads(coco_json_from_yolo([tmp_path / "a.jpg"], labels, tmp_path / "custom.json",
                                            classes=[f"c{i}" for i in range(80)]).read_text())
    assert [a["category_id"] for a in custom["annotations"]] == [17, 80]
    with pytest.raises(ValueError, match="category_ids must give each of the 80 classes its own id"):
        coco_json_from_yolo([tmp_path / "a.jpg"], labels, tmp_path / "x.json", category_ids=[1] * 80)
    (labels / "bad.txt").write_text("3 0.1 0.2\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected a class id"):
        yolo_instances(labels / "bad.txt", 10, 10)
    Image.new("RGB", (10, 10)).save(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected a class id"):
        coco_json_from_yolo([tmp_path / "bad.jpg"], labels, tmp_path / "bad.json")
    Image.fromarray(np.full((4, 4), 7, dtype=np.uint8)).save(tmp_path / "labels.png")
    assert read_label_map(tmp_path / "labels.png")[0, 0] == 7
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="needs one class id per pixel"):
        read_label_map(tmp_path / "rgb.png")


def test_speedup_figure_sets_measured_beside_the_paper(tmp_path):
    from dge_explain.viz.figures import speedup_figure

    cases = [{"preset": "semfpn", "backbone": "pvt_small", "input": [512, 512], "speedup": 1.5, "paper_cpu_speedup": 1.88},
             {"backbone": "pvt_medium", "input": [800, 1333], "speedup": 1.1, "paper_cpu_speedup": None,
              "dense_detector_gmacs": 300.0}]
    figure = speedup_figure(cases)
    heights = [round(bar.get_height(), 2) for bar in figure.axes[0].patches]
    assert heights == [1.5, 1.1, 1.88, 0.0]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["pvt_small\nsemfpn\n512x512",
                                                                        "pvt_medium\nwhole Mask R-CNN\n800x1333"]
    assert _not_blank(save(figure, tmp_path / "speedups", dpi=80)[0])
