"""Which images train the shipped routers and which the published tables are
measured on, fixed here so that no table is measured on an image a router saw.

Folders are relative to the data home ($DGE_EXPLAIN_HOME); halves are every other
image of the sorted listing (``FOLDER:even`` / ``FOLDER:odd``).

* training (``dge-explain train``'s default): the even half of ECSSD's photos (their
  masks are never read by training) and the even half of imagenet-sample;
* development: the even half of ECSSD with its masks, the only masks a choice may
  look at (e.g. which gating map to recommend);
* evaluation (the tables): the odd half of ECSSD, all of in9-fg (segmentation),
  and the odd half of imagenet-sample (top-1).

``overlaps`` compares files by content (a digest of their bytes), not by name, so
a renamed or copied image is caught too.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dge_explain import paths

TRAINING = ("data/ecssd/images:even", "data/imagenet-sample:even")
DEVELOPMENT = {"ecssd-dev": "ecssd:data/ecssd:even"}
EVALUATION = {"ecssd-heldout": "ecssd:data/ecssd:odd",
              "in9-fg": "masks:data/in9-fg/images,data/in9-fg/masks",
              "imagenet-sample-heldout": "data/imagenet-sample:odd"}


def under_home(spec: str, home=None) -> str:
    """A spec of this module with its folder(s) under the data home."""
    root = paths.home(home)
    kind, colon, rest = spec.partition(":")
    if colon and kind in ("ecssd", "masks"):
        return f"{kind}:" + ",".join(str(root / part) for part in rest.split(","))
    return str(root / spec)


def home_relative(spec: str, home=None) -> str:
    """A folder spec (FOLDER[:half]) relative to the data home when it lies under it
    (how a run records its training images portably), else as given."""
    from dge_explain.data.folders import parse_folder_spec

    folder, half = parse_folder_spec(spec)
    try:
        relative = Path(folder).resolve().relative_to(paths.home(home))
    except (ValueError, FileNotFoundError):
        return spec
    return str(relative) + (f":{half}" if half else "")


def image_files(spec: str) -> list[Path]:
    """The image files of a folder spec (FOLDER[:half]) or a segmentation spec."""
    from dge_explain.data.folders import list_images
    from dge_explain.data.listing import DATASET_KINDS, locate, pair_by_stem

    if spec.partition(":")[0] in DATASET_KINDS:
        _, (images, masks), half = locate(spec)
        stems, by_stem, _ = pair_by_stem(images, masks, half)
        return [by_stem[stem] for stem in stems]
    return list_images(spec)


def digest(path: Path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def overlaps(files, home=None) -> dict[str, list[tuple[Path, Path]]]:
    """{evaluation set: [(file, the evaluation image with the same bytes)]} for every
    named evaluation set that shares an image with `files`."""
    mine = {}
    for path in files:
        mine.setdefault(digest(path), path)
    found = {}
    for name, spec in EVALUATION.items():
        shared = [(mine[d], other) for other in image_files(under_home(spec, home)) if (d := digest(other)) in mine]
        if shared:
            found[name] = shared
    return found
