"""Instance annotations and predictions as ``Instance`` lists (drawn by ``viz``):

* YOLO polygon labels (``labels/*.txt``: class id, then normalised x y pairs),
  e.g. coco128-seg;
* COCO annotation JSON and COCO results JSON (bbox, RLE or polygon
  segmentation, decoded with pycocotools);
* semantic label maps stored as PNG (one class id per pixel).
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .classes import COCO_CATEGORY_IDS, COCO_CLASSES


@dataclass
class Instance:
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels
    label: str
    score: float | None = None               # None for ground truth
    mask: np.ndarray | None = None            # bool [H, W]


def yolo_polygons(label_file, width: int, height: int, classes=COCO_CLASSES) -> list[tuple[int, np.ndarray]]:
    """(class id, polygon [P, 2] in pixels) per line of a YOLO segmentation label file."""
    polygons = []
    for number, line in enumerate(Path(label_file).read_text().splitlines(), 1):
        values = line.split()
        if not values:
            continue
        try:
            class_id, coords = int(values[0]), np.array(values[1:], dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"{label_file}:{number}: not 'class x y x y ...': {error}") from error
        if len(coords) < 6 or len(coords) % 2 or not 0 <= class_id < len(classes):
            raise ValueError(f"{label_file}:{number}: expected a class id < {len(classes)} and at "
                             f"least 3 x y pairs, got {len(values)} values")
        polygons.append((class_id, coords.reshape(-1, 2) * [width, height]))
    return polygons


def yolo_instances(label_file, width: int, height: int, classes=COCO_CLASSES) -> list[Instance]:
    """Instances of one YOLO segmentation label file for a width x height image."""
    instances = []
    for class_id, points in yolo_polygons(label_file, width, height, classes):
        x0, y0 = points.min(0)
        x1, y1 = points.max(0)
        instances.append(Instance((x0, y0, x1, y1), classes[class_id], None,
                                  polygon_mask(points, width, height)))
    return instances


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A polygon [P, 2] (pixels) rasterised as COCO does (pycocotools)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.merge(coco_mask.frPyObjects([points.ravel().tolist()], height, width))
    return coco_mask.decode(rle).astype(bool)


class CocoInstances:
    """Ground truth of a COCO annotation file, and optionally a results file."""

    def __init__(self, annotation_file, results_file=None):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(str(annotation_file))
            self.results = self.coco.loadRes(str(results_file)) if results_file else None
        self.names = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}

    def image_id(self, file_name: str) -> int:
        matches = [i["id"] for i in self.coco.dataset["images"] if i["file_name"] == Path(file_name).name]
        if not matches:
            raise ValueError(f"{file_name} is not in the annotation file")
        return matches[0]

    def instances(self, image_id: int, predictions: bool = False, min_score: float = 0.5) -> list[Instance]:
        source = self.results if predictions else self.coco
        if source is None:
            raise ValueError("no results file was given")
        out = []
        for ann in source.loadAnns(source.getAnnIds(imgIds=[image_id])):
            score = ann.get("score") if predictions else None
            if score is not None and score < min_score:
                continue
            x, y, w, h = ann["bbox"]
            mask = source.annToMask(ann).astype(bool) if ann.get("segmentation") else None
            out.append(Instance((x, y, x + w, y + h), self.names.get(ann["category_id"], "?"), score, mask))
        return out


def read_label_map(path) -> np.ndarray:
    """A semantic label PNG (palette or grey) as class ids [H, W]."""
    with Image.open(path) as handle:
        if handle.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path} is a {handle.mode} image; a label map needs one class id per "
                             "pixel (mode P, L or I)")
        return np.asarray(handle)


def coco_json_from_yolo(image_files, label_dir, out_file, classes=COCO_CLASSES, category_ids=None) -> Path:
    """A COCO annotation JSON (polygon segmentations) built from YOLO labels, so
    that YOLO-labelled images can go through the COCO code path.  YOLO class i
    becomes category `category_ids[i]`: by default COCO's own ids (1-90 with gaps)
    for COCO's 80 classes, so that a detector's COCO results JSON names the same
    classes, and 1..N for other class lists."""
    if category_ids is None:
        category_ids = COCO_CATEGORY_IDS if tuple(classes) == COCO_CLASSES else range(1, len(classes) + 1)
    category_ids = list(category_ids)
    if len(category_ids) != len(classes) or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category_ids must give each of the {len(classes)} classes its own id, "
                         f"got {len(category_ids)} ids ({len(set(category_ids))} distinct)")
    images, annotations = [], []
    for image_id, image_file in enumerate(image_files, 1):
        with Image.open(image_file) as handle:
            width, height = handle.size
        images.append({"id": image_id, "file_name": Path(image_file).name, "width": width, "height": height})
        label_file = Path(label_dir) / (Path(image_file).stem + ".txt")
        if not label_file.exists():
            continue
        for class_id, points in yolo_polygons(label_file, width, height, classes):
            x0, y0 = points.min(0)
            x1, y1 = points.max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_ids[class_id], "iscrowd": 0,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                                "segmentation": [points.ravel().round(2).tolist()]})
    categories = [{"id": i, "name": name} for i, name in zip(category_ids, classes)]
    Path(out_file).write_text(json.dumps({"images": images, "annotations": annotations,
                                          "categories": categories}))
    return Path(out_file)
