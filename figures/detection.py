"""Figure (appendix Fig. 7 layout): detection and instance-segmentation overlays.

Rows: ground truth (YOLO polygon labels, e.g. coco128-seg, or a COCO
annotation JSON) and any number of COCO results JSONs (NAME=FILE), one per
backbone; columns: images (--side-by-side: a row per image, a column per source,
as the appendix compares PVT with PVT+DGE).  No detector ships with dge-explain:
pass the results of yours to compare backbones.
"""
import sys
import tempfile
from pathlib import Path

from _common import coco128_root, image_files, image_parser

import numpy as np

from dge_explain.data import load_rgb
from dge_explain.data.annotations import CocoInstances, coco_json_from_yolo
from dge_explain.viz.figures import instance_grid, save


def main(argv=None):
    p = image_parser(__doc__.splitlines()[0], "figs/detection", first=0)
    p.add_argument("--labels-dir", help="YOLO labels (default: coco128-seg's)")
    p.add_argument("--annotations", help="COCO annotation JSON instead of YOLO labels")
    p.add_argument("--results", nargs="*", default=[], help="NAME=COCO_RESULTS.json, one per model")
    p.add_argument("--min-score", type=float, default=0.5)
    p.add_argument("--side-by-side", action="store_true",
                   help="a row per image and a column per source (backbone A | backbone B)")
    args = p.parse_args(argv)
    files = image_files(args)
    with tempfile.TemporaryDirectory() as scratch:
        annotations = args.annotations or coco_json_from_yolo(  # YOLO labels via the COCO path
            files, args.labels_dir or coco128_root(args) / "labels" / "train2017",
            Path(scratch) / "annotations.json")
        truth = CocoInstances(annotations)
        sources = {"ground truth": [truth.instances(truth.image_id(f.name)) for f in files]}
        for spec in args.results:
            name, _, results = spec.partition("=")
            predictions = CocoInstances(annotations, results)
            sources[name] = [predictions.instances(truth.image_id(f.name), True, args.min_score)
                             for f in files]
    images = [np.asarray(load_rgb(f)) for f in files]
    for path in save(instance_grid(images, sources, side_by_side=args.side_by_side), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
