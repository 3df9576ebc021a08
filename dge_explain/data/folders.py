"""Image folders given as ``PATH`` or ``PATH:even`` / ``PATH:odd`` (every other
image of the sorted listing: a deterministic half split, e.g. to train on one
half of imagenet-sample and test on the other).  Files whose name starts with
``._`` (macOS resource forks) are never images and are skipped."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
HALVES = ("even", "odd")


def parse_folder_spec(spec: str) -> tuple[Path, str | None]:
    path, _, half = str(spec).rpartition(":")
    if half in HALVES and path:
        return Path(path), half
    return Path(spec), None


def folder_entries(folder: Path) -> list[Path]:
    """The folder's files in sorted order, macOS ``._*`` files left out."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("._"))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(spec: str) -> list[Path]:
    """Sorted image files of a folder spec; errors name the folder."""
    folder, half = parse_folder_spec(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (from '{spec}')")
    files = [p for p in folder_entries(folder) if is_image(p)]
    if half is not None:
        files = files[HALVES.index(half)::2]
    if not files:
        raise ValueError(f"image folder {folder} holds no images (suffixes "
                         f"{' '.join(sorted(IMAGE_SUFFIXES))}; from '{spec}')")
    return files
