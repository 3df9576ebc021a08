"""Figure (appendix Fig. 7 layout): detection and instance-segmentation overlays.

Columns: ground truth (YOLO polygon labels, e.g. coco128-seg, or a COCO
annotation JSON) and any number of COCO results JSONs (NAME=FILE), one per
backbone; rows: images.  No detector ships with dge-explain: pass the results
of yours to compare backbones.
"""
import sys
import tempfile
from pathlib import Path

from _common import parser

import numpy as np

from dge_explain import paths
from dge_explain.data import load_rgb
from dge_explain.data.annotations import CocoInstances, coco_json_from_yolo
from dge_explain.figures import instance_grid, save


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "figs/detection")
    p.add_argument("--images-dir", help="default $DGE_EXPLAIN_HOME/data/coco128-seg/images/train2017")
    p.add_argument("--labels-dir", help="YOLO labels (default: coco128-seg's)")
    p.add_argument("--annotations", help="COCO annotation JSON instead of YOLO labels")
    p.add_argument("--results", nargs="*", default=[], help="NAME=COCO_RESULTS.json, one per model")
    p.add_argument("--min-score", type=float, default=0.5)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--first", type=int, default=0, help="index of the first image (sorted names)")
    args = p.parse_args(argv)
    root = paths.home(args.home) / "data" / "coco128-seg"
    images_dir = Path(args.images_dir or root / "images" / "train2017")
    files = sorted(images_dir.glob("*.jpg"))[args.first:args.first + args.count]
    if not files:
        raise SystemExit(f"no .jpg images in {images_dir}")
    with tempfile.TemporaryDirectory() as scratch:
        annotations = args.annotations or coco_json_from_yolo(  # YOLO labels via the COCO path
            files, args.labels_dir or root / "labels" / "train2017", Path(scratch) / "annotations.json")
        truth = CocoInstances(annotations)
        sources = {"ground truth": [truth.instances(truth.image_id(f.name)) for f in files]}
        for spec in args.results:
            name, _, results = spec.partition("=")
            predictions = CocoInstances(annotations, results)
            sources[name] = [predictions.instances(truth.image_id(f.name), True, args.min_score)
                             for f in files]
    images = [np.asarray(load_rgb(f)) for f in files]
    for path in save(instance_grid(images, sources), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
