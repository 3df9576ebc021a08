"""Image folders given as ``PATH`` or ``PATH:even`` / ``PATH:odd`` (every other
image of the sorted listing: a deterministic half split, e.g. to train on one
half of imagenet-sample and test on the other).  Files whose name starts with
``._`` (macOS resource forks) are never images and are skipped.

An image's key (its identity in records and outputs) is its file name made
printable: the name's bytes read as UTF-8, every byte that is not valid UTF-8
written as ``\\xNN`` (``b'caf\\xe9.jpg'`` -> ``caf\\xe9.jpg``).  Messages name
files the same way; the file itself is always read from its real path."""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
HALVES = ("even", "odd")


def parse_folder_spec(spec: str) -> tuple[Path, str | None]:
    path, _, half = str(spec).rpartition(":")
    if half in HALVES and path:
        return Path(path), half
    return Path(spec), None


def printable(path) -> str:
    """A path or name as text that can be printed and written anywhere: undecodable
    bytes (kept by Python as lone surrogates, which UTF-8 cannot encode) become \\xNN."""
    text = str(path)
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name yields (the name was not read from disk)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unique_keys(files: list[Path]) -> list[str]:
    """The keys of `files` (printable names), refused when two files would share one
    (only a name spelling an escape literally, e.g. 'caf\\xe9.jpg', can collide)."""
    keys = [printable(p.name) for p in files]
    if len(set(keys)) != len(keys):
        seen: dict[str, Path] = {}
        for key, path in zip(keys, files):
            if key in seen:
                raise ValueError(f"{printable(seen[key])} and {printable(path)} both print as '{key}' "
                                 "(one name holds bytes that are not UTF-8): rename one of them")
            seen[key] = path
    return keys


GONE = [-1] * 4  # the fingerprint of a file gone since the listing: matches no record


def fingerprint(path: Path) -> list[int]:
    """Size, modification time, status-change time and inode of a file: whether it
    may have changed, without reading it.  ctime is set by the system on every
    write, rename or metadata change and cannot be set back (``cp -p``, ``touch -r``
    and ``tar`` restore the modification time only), so a same-size replacement
    given its old modification time still differs."""
    try:
        status = path.stat()
    except OSError:  # gone since the listing: no fingerprint matches, reading names it
        return list(GONE)
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def folder_entries(folder: Path) -> list[Path]:
    """The folder's files in sorted order, macOS ``._*`` files left out."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("._"))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(spec: str) -> list[Path]:
    """Sorted image files of a folder spec; errors name the folder."""
    folder, half = parse_folder_spec(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {printable(folder)} does not exist (from '{printable(spec)}')")
    files = [p for p in folder_entries(folder) if is_image(p)]
    if half is not None:
        files = files[HALVES.index(half)::2]
    if not files:
        raise ValueError(f"image folder {printable(folder)} holds no images (suffixes "
                         f"{' '.join(sorted(IMAGE_SUFFIXES))}; from '{printable(spec)}')")
    return files
