"""Figure (appendix Fig. 8 layout): semantic-segmentation overlays.

Rows: the images, then one row per source (NAME=FOLDER of PNG label maps
named like the images) with its label map over each image; columns: images
(--side-by-side: a row per image: image | source A | source B); palette ade20k
(150 classes), coco, voc.  Without
sources it draws the ground truth of coco128-seg (instance polygons rasterised
into a COCO-class label map), as a demonstration of the layout.
"""
import sys
from pathlib import Path

import numpy as np
from _common import coco128_root, image_files, image_parser
from PIL import Image

from dge_explain.data import load_rgb
from dge_explain.data.annotations import read_label_map, yolo_instances
from dge_explain.viz.figures import save, semantic_grid
from dge_explain.viz import COCO_CLASSES


def coco128_label_map(image_file: Path, label_dir: Path) -> np.ndarray:
    with Image.open(image_file) as handle:
        width, height = handle.size
    labels = np.full((height, width), 255, dtype=np.int64)
    label_file = label_dir / (image_file.stem + ".txt")
    instances = yolo_instances(label_file, width, height) if label_file.exists() else []
    for instance in sorted(instances, key=lambda i: -i.mask.sum()):   # small objects on top
        labels[instance.mask] = COCO_CLASSES.index(instance.label)
    return labels


def main(argv=None):
    p = image_parser(__doc__.splitlines()[0], "figs/semantic", first=4)
    p.add_argument("--sources", nargs="*", default=[], help="NAME=FOLDER of label PNGs")
    p.add_argument("--palette", default=None, help="ade20k, coco or voc (default coco for the demo)")
    p.add_argument("--side-by-side", action="store_true",
                   help="a row per image and a column per source (backbone A | backbone B)")
    args = p.parse_args(argv)
    files = image_files(args)
    images = [np.asarray(load_rgb(f)) for f in files]
    if args.sources:
        sources = {}
        for spec in args.sources:
            name, _, folder = spec.partition("=")
            sources[name] = [read_label_map(Path(folder) / (f.stem + ".png")) for f in files]
        palette = args.palette or "ade20k"
    else:
        labels = coco128_root(args) / "labels" / "train2017"
        sources = {"ground truth (coco128)": [coco128_label_map(f, labels) for f in files]}
        palette = args.palette or "coco"
    for path in save(semantic_grid(images, sources, palette, side_by_side=args.side_by_side), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
