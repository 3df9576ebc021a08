"""Image/mask pairs for scoring maps as soft segmentations.

* ``MaskFolder(images_dir, masks_dir)``: files paired by stem (ECSSD layout:
  images/NNNN.jpg with masks/NNNN.png); foreground = mask > 0.
* ``ImagenetSegMat(path)``: the ImageNet-segmentation ``gtsegs_ijcv.mat`` of
  Guillaumin et al. used by Chefer et al.: MATLAB v7.3 (HDF5) with object
  references under /value/img (one per image) and /value/gt (a reference to a
  cell holding the mask); arrays are stored transposed (column-major).

As in Chefer et al.'s evaluation, the image is resized to S x S with PIL (bilinear
unless the preprocessing says otherwise) and normalised with the model's mean and
std; the mask is resized with PIL's nearest neighbour (pixel centres).

Every item is a dict: image [3, S, S], mask [S, S] bool, index (position in the
listing), key (the image's identity: its file name, or the .mat entry), digest (a
hash of the bytes read), mask_issue (why the mask is suspicious, or ''), error
(why the item could not be read, or '': the evaluation stops naming it, after
keeping what it has scored).  ``stat(i)`` is a cheap fingerprint (sizes and
modification times) that tells, without reading the files, whether an item may
have changed since it was scored.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .listing import locate, pair_by_stem
from .preprocess import Preprocessing
from .transforms import open_image

MASK_ISSUES = {
    "empty": "empty after resizing (no foreground pixel)",
    "full": "all foreground after resizing",
    "non-binary": "not binary (more than two grey levels, e.g. a JPEG mask; foreground = level > 0)",
    "alpha": "stored in its alpha channel only (read from there)",
}


def _digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def read_mask(data: bytes, path) -> tuple[np.ndarray, list[str]]:
    """Foreground (grey level > 0) of a mask file, and what is odd about it: more
    than two grey levels ('non-binary', e.g. a JPEG mask), or a foreground only in
    the alpha channel ('alpha', then read from there)."""
    image = open_image(data, path)
    grey = np.asarray(image.convert("L"))
    issues = []
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if grey.min() == grey.max() and alpha.min() != alpha.max():
            grey, issues = alpha, ["alpha"]
    if np.count_nonzero(np.bincount(grey.ravel(), minlength=256)) > 2:
        issues.append("non-binary")
    return grey > 0, issues


class _Pairs(Dataset):
    """preprocessing may be None to list and pair the files only (e.g. to check a
    dataset before a model is loaded); items need it."""

    def __init__(self, preprocessing: Preprocessing | None):
        self.preprocessing = preprocessing

    @property
    def size(self) -> int:
        if self.preprocessing is None:
            raise ValueError("this dataset was opened without preprocessing; items need it")
        return self.preprocessing.input_size

    def _item(self, index: int, key: str, stat: list[int], digest: str, image: Image.Image,
              foreground: np.ndarray, issues: list[str]) -> dict:
        mask = np.array(Image.fromarray(foreground.astype(np.uint8)).resize((self.size, self.size),
                                                                           Image.NEAREST)) > 0
        if not mask.any():
            issues.append("empty")
        elif mask.all():
            issues.append("full")
        return {"image": self.preprocessing.segmentation_image(image.convert("RGB")),
                "mask": torch.from_numpy(mask), "index": index, "key": key,
                "stat": torch.tensor(stat, dtype=torch.long), "digest": digest,
                "mask_issue": ",".join(issues), "error": ""}

    def _failed(self, index: int, key: str, error: Exception) -> dict:
        return {"image": torch.zeros(3, self.size, self.size),
                "mask": torch.zeros(self.size, self.size, dtype=torch.bool), "index": index, "key": key,
                "stat": torch.zeros(len(self.stat(index)), dtype=torch.long), "digest": "", "mask_issue": "",
                "error": str(error)}


class MaskFolder(_Pairs):
    def __init__(self, images_dir, masks_dir, preprocessing: Preprocessing | None = None):
        super().__init__(preprocessing)
        self.stems, self.images, self.masks = pair_by_stem(Path(images_dir), Path(masks_dir))

    def __len__(self) -> int:
        return len(self.stems)

    def keys(self) -> list[str]:
        return [self.images[stem].name for stem in self.stems]

    def stat(self, index: int) -> list[int]:
        stem = self.stems[index]
        try:
            image, mask = self.images[stem].stat(), self.masks[stem].stat()
        except OSError:  # gone since the listing: no fingerprint matches, reading names it
            return [-1, -1, -1, -1]
        return [image.st_size, image.st_mtime_ns, mask.st_size, mask.st_mtime_ns]

    def _read(self, index: int) -> tuple[bytes, bytes]:
        stem = self.stems[index]
        paths = (self.images[stem], self.masks[stem])
        try:
            return tuple(path.read_bytes() for path in paths)
        except OSError as error:
            raise ValueError(f"cannot read {error.filename}: {error.strerror}") from None

    def digest(self, index: int) -> str:
        return _digest(*self._read(index))

    def __getitem__(self, index: int) -> dict:
        stem = self.stems[index]
        key = self.images[stem].name
        try:
            stat = self.stat(index)
            image_bytes, mask_bytes = self._read(index)
            image = open_image(image_bytes, self.images[stem])
            foreground, issues = read_mask(mask_bytes, self.masks[stem])
            if foreground.shape != (image.height, image.width):
                raise ValueError(f"mask {self.masks[stem]} is {foreground.shape[1]}x{foreground.shape[0]} "
                                 f"but image {self.images[stem]} is {image.width}x{image.height}")
        except ValueError as error:
            return self._failed(index, key, error)
        return self._item(index, key, stat, _digest(image_bytes, mask_bytes), image, foreground, issues)

    def describe(self, index: int) -> str:
        stem = self.stems[index]
        return f"{self.images[stem]} with mask {self.masks[stem]}"


class ImagenetSegMat(_Pairs):
    def __init__(self, path, preprocessing: Preprocessing | None = None):
        super().__init__(preprocessing)
        import h5py

        self.path = Path(path)
        self._file = None
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        try:
            with h5py.File(self.path, "r") as handle:
                self.count = handle["value/img"].shape[0]
                if handle["value/gt"].shape[0] != self.count:
                    raise ValueError(f"{self.path}: /value/img has {self.count} entries but /value/gt "
                                     f"has {handle['value/gt'].shape[0]}")
        except (OSError, KeyError) as error:
            raise ValueError(f"{self.path} is not an ImageNet-segmentation .mat file (HDF5 with "
                             f"/value/img and /value/gt): {error}") from error

    def __len__(self) -> int:
        return self.count

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def keys(self) -> list[str]:
        return [f"{index:05d}" for index in range(self.count)]

    def stat(self, index: int) -> list[int]:
        status = self.path.stat()
        return [status.st_size, status.st_mtime_ns]

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import h5py

        if self._file is None:  # opened lazily: one handle per DataLoader worker
            self._file = h5py.File(self.path, "r")
        f = self._file
        image = np.array(f[f["value/img"][index, 0]]).transpose(2, 1, 0)
        mask = np.array(f[f[f["value/gt"][index, 0]][0, 0]]).transpose(1, 0)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{self.path} entry {index}: image {image.shape[:2]} and mask "
                             f"{mask.shape} differ in size")
        return np.ascontiguousarray(image.astype(np.uint8)), np.ascontiguousarray(mask)

    def digest(self, index: int) -> str:
        image, mask = self._arrays(index)
        return _digest(image.tobytes(), mask.tobytes())

    def __getitem__(self, index: int) -> dict:
        key = f"{index:05d}"
        try:
            image, mask = self._arrays(index)
        except (ValueError, OSError, KeyError) as error:
            return self._failed(index, key, ValueError(f"{self.describe(index)}: {error}"))
        levels = np.unique(mask)
        issues = ["non-binary"] if levels.size > 2 else []
        return self._item(index, key, self.stat(index), _digest(image.tobytes(), mask.tobytes()),
                          Image.fromarray(image), mask > 0, issues)

    def describe(self, index: int) -> str:
        return f"{self.path} entry {index}"


def segmentation_dataset(spec: str, preprocessing: Preprocessing | None = None) -> Dataset:
    """'ecssd:FOLDER' (FOLDER/images + FOLDER/masks), 'masks:IMAGES,MASKS' or
    'imagenet-seg:FILE.mat', read with the protocol's resize of `preprocessing`
    (see Preprocessing.for_segmentation)."""
    kind, paths = locate(spec)
    if kind == "imagenet-seg":
        return ImagenetSegMat(paths[0], preprocessing)
    return MaskFolder(*paths, preprocessing)
