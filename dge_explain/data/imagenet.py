"""Labelled ImageNet images named ``<synset>_<anything>.jpg`` (e.g. the shared
imagenet-sample); the class index is the synset's rank among the 1000 ImageNet
synsets, which sort in class-index order."""
from __future__ import annotations

import hashlib
import re

import torch
from torch.utils.data import Dataset

from .folders import fingerprint, list_images, parse_folder_spec, printable, unique_keys
from .transforms import DEFAULT, Reader

SYNSET = re.compile(r"^(n\d{8})_")


class LabelledImageFolder(Dataset):
    """Images labelled by the synset prefix of their file name.

    The label of a synset is its rank among the synsets present; with one image
    per class of all 1000 classes that is the ImageNet class index.  Pass
    ``synsets`` (the full sorted list) when the folder holds a subset."""

    def __init__(self, root, transform, synsets: list[str] | None = None, reader: Reader | None = None):
        """root: a folder, or 'folder:even' / 'folder:odd' for half of it; transform:
        PIL image -> tensor (e.g. Preprocessing.classification_transform()); reader:
        the rules files are read by (default: those of the transform's preprocessing,
        when it has one, so that a run's recorded settings are the ones applied)."""
        self.root = parse_folder_spec(root)[0]
        files = list_images(str(root))
        unlabelled = [printable(p.name) for p in files if not SYNSET.match(p.name)]
        if unlabelled:
            raise ValueError(f"{printable(self.root)}: {len(unlabelled)} file(s) do not start with a synset "
                             f"id (nXXXXXXXX_), e.g. {unlabelled[0]}")
        self.files = files
        self._keys = unique_keys(files)
        preprocessing = getattr(transform, "preprocessing", None)
        self.reader = reader or (preprocessing.reader if preprocessing is not None else DEFAULT)
        found = sorted({SYNSET.match(p.name).group(1) for p in files})
        # A half of a one-image-per-class folder must keep the full class list.
        self.synsets = synsets if synsets is not None else sorted(
            {SYNSET.match(p.name).group(1) for p in list_images(str(self.root))})
        index = {s: i for i, s in enumerate(self.synsets)}
        missing = [s for s in found if s not in index]
        if missing:
            raise ValueError(f"{printable(self.root)}: synsets {missing[:5]} are not in the given synset list")
        self.labels = [index[SYNSET.match(p.name).group(1)] for p in files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.reader.rgb(self.files[i])), self.labels[i]

    def keys(self) -> list[str]:
        return list(self._keys)

    def stat(self, i: int) -> list[int]:
        return fingerprint(self.files[i])

    def digest(self, i: int) -> str:
        return hashlib.blake2b(self.files[i].read_bytes(), digest_size=16).hexdigest()


class IdentifiedImages(Dataset):
    """A LabelledImageFolder whose items are dicts with the image's identity (for the
    resumable commands): image, label, index, key, stat, digest, error."""

    def __init__(self, folder: LabelledImageFolder, size: int):
        self.folder, self.size = folder, size

    def __len__(self) -> int:
        return len(self.folder)

    def keys(self) -> list[str]:
        return self.folder.keys()

    def stat(self, i: int) -> list[int]:
        return self.folder.stat(i)

    def digest(self, i: int) -> str:
        return self.folder.digest(i)

    def describe(self, i: int) -> str:
        return printable(self.folder.files[i])

    def __getitem__(self, i: int) -> dict:
        path = self.folder.files[i]
        item = {"label": self.folder.labels[i], "index": i, "key": self.folder._keys[i],
                "stat": torch.tensor(self.stat(i), dtype=torch.long)}
        try:
            data = path.read_bytes()
            image = self.folder.transform(self.folder.reader.open(data, path).convert("RGB"))
        except (OSError, ValueError) as error:
            message = error if isinstance(error, ValueError) else \
                f"cannot read image {printable(path)}: {getattr(error, 'strerror', None) or error}"
            return {**item, "image": torch.zeros(3, self.size, self.size), "digest": "", "error": str(message)}
        return {**item, "image": image, "digest": hashlib.blake2b(data, digest_size=16).hexdigest(), "error": ""}
