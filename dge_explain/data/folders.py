"""Image folders given as ``PATH`` or ``PATH:even`` / ``PATH:odd`` (every other
image of the sorted listing: a deterministic half split, e.g. to train on one
half of imagenet-sample and test on the other)."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
HALVES = ("even", "odd")


def parse_folder_spec(spec: str) -> tuple[Path, str | None]:
    path, _, half = str(spec).rpartition(":")
    if half in HALVES and path:
        return Path(path), half
    return Path(spec), None


def list_images(spec: str) -> list[Path]:
    """Sorted image files of a folder spec; errors name the folder."""
    folder, half = parse_folder_spec(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (from '{spec}')")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if half is not None:
        files = files[HALVES.index(half)::2]
    if not files:
        raise ValueError(f"image folder {folder} holds no images (from '{spec}')")
    return files
