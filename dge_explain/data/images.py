"""Image files a user names (files, folders, glob patterns), with no masks and no
labels: the input of ``dge-explain explain``.

Items are dicts as the resumable loop expects (see ``data.segmentation``): image
[3, S, S] (the model's input), index, key (the file's path below the folder all
the files share, made printable), stat (the fingerprint), digest, error, and size (W, H) of the photo
as read (upright: EXIF applied unless the reader says otherwise).
"""
from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .folders import IMAGE_SUFFIXES, fingerprint, folder_entries, is_image, printable
from .preprocess import Preprocessing


def image_paths(arguments) -> list[Path]:
    """The image files (resolved) named by command-line arguments, in order, each once: a file,
    every image of a folder (sorted, not recursive), or the matches of a glob
    pattern the shell left alone; anything that names no image is refused by name."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            images = [p for p in folder_entries(path) if is_image(p)]
            if not images:
                raise ValueError(f"folder {printable(path)} holds no images (suffixes "
                                 f"{' '.join(sorted(IMAGE_SUFFIXES))})")
            found += images
        elif path.is_file():
            if not is_image(path):
                raise ValueError(f"{printable(path)} is not an image file (suffixes "
                                 f"{' '.join(sorted(IMAGE_SUFFIXES))})")
            found.append(path)
        elif glob.has_magic(str(argument)):
            matches = sorted(Path(p) for p in glob.glob(str(argument)) if is_image(Path(p)) and Path(p).is_file())
            if not matches:
                raise ValueError(f"pattern '{printable(argument)}' matches no image file")
            found += matches
        else:
            raise FileNotFoundError(f"{printable(path)} does not exist")
    return list(dict.fromkeys(p.resolve() for p in found))


class ImageFiles(Dataset):
    def __init__(self, files: list[Path], preprocessing: Preprocessing):
        self.files, self.preprocessing = list(files), preprocessing
        # keys: paths below the files' common folder (a lone file: its name)
        common = Path(os.path.commonpath([p.parent for p in self.files])) if self.files else Path()
        self._keys = [printable(p.relative_to(common)) for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def keys(self) -> list[str]:
        return self._keys

    def stat(self, index: int) -> list[int]:
        return fingerprint(self.files[index])

    def digest(self, index: int) -> str:
        return hashlib.blake2b(self.files[index].read_bytes(), digest_size=16).hexdigest()

    def describe(self, index: int) -> str:
        return self._keys[index]

    def __getitem__(self, index: int) -> dict:
        path, size = self.files[index], self.preprocessing.input_size
        item = {"index": index, "key": self._keys[index], "stat": torch.tensor(self.stat(index), dtype=torch.long)}
        try:
            data = path.read_bytes()
            image = self.preprocessing.reader.open(data, path).convert("RGB")
        except OSError as error:
            failure = f"cannot read image {self._keys[index]}: {error.strerror}"
        except ValueError as error:
            failure = str(error)
        else:
            return {**item, "image": self.preprocessing.model_input(image), "size": torch.tensor(image.size),
                    "digest": hashlib.blake2b(data, digest_size=16).hexdigest(), "error": ""}
        return {**item, "image": torch.zeros(3, size, size), "size": torch.zeros(2, dtype=torch.long),
                "digest": "", "error": failure}
