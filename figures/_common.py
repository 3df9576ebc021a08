"""Shared argument handling of the figure scripts (run them from the repo root)."""
import argparse
import os


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=default_out, help="output stem: writes STEM.png and STEM.pdf")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")
    p.add_argument("--home", default=os.environ.get("DGE_EXPLAIN_HOME"),
                   help="data home (default $DGE_EXPLAIN_HOME)")
    return p


def map_parser(description: str, default_out: str, default_layers) -> argparse.ArgumentParser:
    """Arguments of the figures that draw maps of a model on a segmentation dataset."""
    p = parser(description, default_out)
    p.add_argument("--model", default="deit_dge_s12_tiny_patch16_224.distilled")
    p.add_argument("--dataset", help="default ecssd:$DGE_EXPLAIN_HOME/data/ecssd")
    p.add_argument("--layers", default=default_layers, help="comma-separated gating layers")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3], help="dataset indices")
    return p


def model_and_dataset(args):
    from dge_explain import paths
    from dge_explain.api import load_model
    from dge_explain.data import Preprocessing, segmentation_dataset

    model = load_model(args.model, home=args.home)
    spec = paths.expand(args.dataset, args.home) if args.dataset else \
        f"ecssd:{paths.home(args.home) / 'data' / 'ecssd'}"
    dataset = segmentation_dataset(spec, Preprocessing.of(model).for_segmentation())
    return model, dataset


def image_parser(description: str, default_out: str, first: int) -> argparse.ArgumentParser:
    """Arguments of the figures that draw a few images of a folder (default: coco128-seg)."""
    p = parser(description, default_out)
    p.add_argument("--images-dir", help="default $DGE_EXPLAIN_HOME/data/coco128-seg/images/train2017")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--first", type=int, default=first, help="index of the first image (sorted names)")
    return p


def coco128_root(args):
    from dge_explain import paths

    return paths.home(args.home) / "data" / "coco128-seg"


def image_files(args) -> list:
    """The --count images from --first of --images-dir (sorted .jpg names)."""
    from pathlib import Path

    folder = Path(args.images_dir or coco128_root(args) / "images" / "train2017")
    files = sorted(folder.glob("*.jpg"))[args.first:args.first + args.count]
    if not files:
        raise SystemExit(f"no .jpg images in {folder} (from index {args.first})")
    return files
