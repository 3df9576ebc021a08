"""Dataset specs and the pairing of image and mask files, without torch, so that
the command line can check a dataset before the heavy imports and the model.

A folder spec may end in ``:even`` or ``:odd``: every other pair of the sorted
listing (``ecssd:FOLDER:odd``), as image folders take them (``data.folders``); the
fixed half splits of ``training.splits`` are written so."""
from __future__ import annotations

from pathlib import Path

from .folders import HALVES, IMAGE_SUFFIXES, folder_entries, is_image, printable

DATASET_KINDS = ("ecssd", "masks", "imagenet-seg")
_WHAT = {"ecssd": ("folder",), "masks": ("images folder", "masks folder"), "imagenet-seg": (".mat file",)}
_FORM = {"ecssd": "ecssd:FOLDER[:even|:odd]", "masks": "masks:IMAGES_DIR,MASKS_DIR[:even|:odd]",
         "imagenet-seg": "imagenet-seg:FILE.mat"}


def _parts(spec: str) -> tuple[str, list[str], str | None]:
    """(kind, the spec's paths, the half or None); an empty path is refused by name,
    since Path('') is the current directory and would be read silently in its place."""
    kind, colon, location = spec.partition(":")
    if kind not in DATASET_KINDS or not colon:
        raise ValueError(f"dataset '{printable(spec)}' must be KIND:PATH with KIND one of "
                         f"{', '.join(DATASET_KINDS)}")
    rest, _, half = location.rpartition(":")
    if half in HALVES and rest and kind != "imagenet-seg":
        location = rest
    else:
        half = None
    parts = location.split(",") if kind == "masks" else [location]
    what = _WHAT[kind]
    if len(parts) != len(what):  # masks only: a folder name holding a comma cannot be told apart
        raise ValueError(f"dataset '{printable(spec)}' names {len(parts)} folder{'s' if len(parts) > 1 else ''}"
                         f", not {len(what)}; give {_FORM[kind]}")
    for name, part in zip(what, parts):
        if not part.strip():
            raise ValueError(f"dataset '{printable(spec)}': the {name} is empty; give {_FORM[kind]}")
    return kind, parts, half


def canonical_spec(spec: str) -> str:
    """The dataset spec with absolute, resolved paths (to compare runs)."""
    kind, parts, half = _parts(spec)
    return f"{kind}:" + ",".join(str(Path(part).expanduser().resolve()) for part in parts) + \
        (f":{half}" if half else "")


def locate(spec: str) -> tuple[str, tuple[Path, ...], str | None]:
    """(kind, paths, half): the images and masks folders, or the .mat file; the
    half of the pairs asked for (None: all)."""
    kind, parts, half = _parts(canonical_spec(spec))
    if kind == "ecssd":
        return kind, (Path(parts[0]) / "images", Path(parts[0]) / "masks"), half
    return kind, tuple(Path(part) for part in parts), half


def _by_stem(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """Image files by stem, and the files whose suffix is not a supported image."""
    entries = folder_entries(folder)
    files = [p for p in entries if is_image(p)]
    by_stem = {p.stem: p for p in files}
    if len(by_stem) != len(files):
        twins = sorted({printable(p.name) for p in files if sum(q.stem == p.stem for q in files) > 1})
        raise ValueError(f"{printable(folder)} holds several files per name, which cannot be paired: "
                         f"{', '.join(twins[:6])}")
    return by_stem, [p for p in entries if not is_image(p)]


def pair_by_stem(images_dir: Path, masks_dir: Path,
                 half: str | None = None) -> tuple[list[str], dict[str, Path], dict[str, Path]]:
    """(sorted stems, of `half` of them when given, image file by stem, mask file by
    stem); every failure names the files."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {printable(folder)} does not exist")
    (images, other_images), (masks, other_masks) = _by_stem(images_dir), _by_stem(masks_dir)
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        where = [printable(images.get(s) or masks.get(s)) for s in unpaired[:5]]
        unsupported = [p for p in other_images + other_masks if p.stem in unpaired]
        hint = (f"; unsupported suffix (supported: {' '.join(sorted(IMAGE_SUFFIXES))}): "
                + ", ".join(printable(p) for p in unsupported[:5])) if unsupported else ""
        raise ValueError(f"{len(unpaired)} file(s) without a partner between {printable(images_dir)} and "
                         f"{printable(masks_dir)}: {', '.join(where)}{hint}")
    if not images:
        raise ValueError(f"{printable(images_dir)} holds no images (suffixes {' '.join(sorted(IMAGE_SUFFIXES))})")
    stems = sorted(images)
    return (stems if half is None else stems[HALVES.index(half)::2]), images, masks


def check_dataset(spec: str) -> None:
    """Refuses a dataset spec that cannot be read (bad kind, empty or missing folder
    or file, unpaired files), naming what is wrong."""
    kind, paths, half = locate(spec)
    if kind == "imagenet-seg":
        if not paths[0].is_file():
            raise FileNotFoundError(f"{printable(paths[0])} does not exist")
    else:
        pair_by_stem(*paths, half)
