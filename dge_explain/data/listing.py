"""Dataset specs and the pairing of image and mask files, without torch, so that
the command line can check a dataset before the heavy imports and the model."""
from __future__ import annotations

from pathlib import Path

from .folders import IMAGE_SUFFIXES, folder_entries, is_image

DATASET_KINDS = ("ecssd", "masks", "imagenet-seg")


def canonical_spec(spec: str) -> str:
    """The dataset spec with absolute, resolved paths (to compare runs)."""
    kind, _, location = spec.partition(":")
    if kind not in DATASET_KINDS or not location:
        raise ValueError(f"dataset '{spec}' must be KIND:PATH with KIND one of {', '.join(DATASET_KINDS)}")
    parts = location.split(",") if kind == "masks" else [location]
    return f"{kind}:" + ",".join(str(Path(part).expanduser().resolve()) for part in parts)


def locate(spec: str) -> tuple[str, tuple[Path, ...]]:
    """(kind, paths): the images and masks folders, or the .mat file."""
    kind, _, location = canonical_spec(spec).partition(":")
    if kind == "ecssd":
        return kind, (Path(location) / "images", Path(location) / "masks")
    if kind == "masks":
        images, _, masks = location.partition(",")
        if not masks:
            raise ValueError(f"dataset '{spec}': give masks:IMAGES_DIR,MASKS_DIR")
        return kind, (Path(images), Path(masks))
    return kind, (Path(location),)


def _by_stem(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """Image files by stem, and the files whose suffix is not a supported image."""
    entries = folder_entries(folder)
    files = [p for p in entries if is_image(p)]
    by_stem = {p.stem: p for p in files}
    if len(by_stem) != len(files):
        twins = sorted({p.name for p in files if sum(q.stem == p.stem for q in files) > 1})
        raise ValueError(f"{folder} holds several files per name, which cannot be paired: {twins[:6]}")
    return by_stem, [p for p in entries if not is_image(p)]


def pair_by_stem(images_dir: Path, masks_dir: Path) -> tuple[list[str], dict[str, Path], dict[str, Path]]:
    """(sorted stems, image file by stem, mask file by stem); every failure names the files."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist")
    (images, other_images), (masks, other_masks) = _by_stem(images_dir), _by_stem(masks_dir)
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        where = [str(images.get(s) or masks.get(s)) for s in unpaired[:5]]
        unsupported = [p for p in other_images + other_masks if p.stem in unpaired]
        hint = (f"; unsupported suffix (supported: {' '.join(sorted(IMAGE_SUFFIXES))}): "
                + ", ".join(str(p) for p in unsupported[:5])) if unsupported else ""
        raise ValueError(f"{len(unpaired)} file(s) without a partner between {images_dir} and "
                         f"{masks_dir}: {', '.join(where)}{hint}")
    if not images:
        raise ValueError(f"{images_dir} holds no images (suffixes {' '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(images), images, masks


def check_dataset(spec: str) -> None:
    """Refuses a dataset spec that cannot be read (bad kind, missing folder or file,
    unpaired files), naming what is wrong."""
    kind, paths = locate(spec)
    if kind == "imagenet-seg":
        if not paths[0].is_file():
            raise FileNotFoundError(f"{paths[0]} does not exist")
    else:
        pair_by_stem(*paths)
