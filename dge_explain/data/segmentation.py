"""Image/mask pairs for scoring maps as soft segmentations.

* ``MaskFolder(images_dir, masks_dir)``: files paired by stem (ECSSD layout:
  images/NNNN.jpg with masks/NNNN.png); both read upright (their EXIF
  orientation applied) unless the preprocessing's ``exif`` is off; foreground as
  ``binarise`` says.
* ``ImagenetSegMat(path)``: the ImageNet-segmentation ``gtsegs_ijcv.mat`` of
  Guillaumin et al. used by Chefer et al.: MATLAB v7.3 (HDF5) with object
  references under /value/img (one per image) and /value/gt (a reference to a
  cell holding the mask); arrays are stored transposed (column-major).

As in Chefer et al.'s evaluation, the image is resized to S x S with PIL (bilinear
unless the preprocessing says otherwise) and normalised with the model's mean and
std; the mask is resized with PIL's nearest neighbour (pixel centres).

Every item is a dict: image [3, S, S], mask [S, S] bool, index (position in the
listing), key (the image's identity: its file name made printable, see
``folders.printable``, or the .mat entry), digest (a
hash of the bytes read), mask_issue (why the mask is suspicious, or ''), error
(why the item could not be read, or '': the run skips it, naming it, and
keeping what it has scored).  ``stat(i)`` is a cheap fingerprint that tells,
without reading the files, whether an item may have changed since it was scored
(``folders.fingerprint`` of each file: size, modification and status-change
times, inode).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .folders import fingerprint, printable, unique_keys
from .listing import locate, pair_by_stem
from .preprocess import Preprocessing
from .transforms import ORIENTATIONS, Reader

MASK_ISSUES = {
    "empty": "empty after resizing (no foreground pixel)",
    "full": "all foreground after resizing",
    "non-binary": "not binary (more than two grey levels, e.g. JPEG-compressed)",
    "alpha": "stored in the alpha channel only (read from there)",
}


def _digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def binarise(levels: np.ndarray, threshold: int) -> tuple[np.ndarray, list[str]]:
    """Foreground of a mask's grey levels: with two levels, the higher one, whatever
    they are (0/1, 0/255, 17/200); with one, any level above 0; with more (JPEG
    noise, anti-aliased edges), levels >= threshold, flagged 'non-binary'."""
    values = np.unique(levels)
    if values.size > 2:
        return levels >= threshold, ["non-binary"]
    return (levels == values[-1]) if values.size == 2 else (levels > 0), []


def read_mask(data: bytes, path, reader: Reader, threshold: int) -> tuple[np.ndarray, int, list[str]]:
    """(foreground, the file's EXIF orientation, what is odd about the mask): read
    upright as the reader says, grey levels binarised (see binarise); a foreground
    only in the alpha channel is read from there ('alpha')."""
    image, orientation = reader.decode(data, path, "mask")
    grey = np.asarray(image.convert("L"))
    issues = []
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if grey.min() == grey.max() and alpha.min() != alpha.max():
            grey, issues = alpha, ["alpha"]
    foreground, odd = binarise(grey, threshold)
    return foreground, orientation, issues + odd


def _as_read(what: str, path, size: tuple[int, int], orientation: int, exif: bool) -> str:
    """'image P is WxH', saying how its EXIF orientation, if any, was treated."""
    width, height = size
    text = f"{what} {printable(path)} is {width}x{height}"
    if orientation not in ORIENTATIONS:
        return text
    other = f"{height}x{width}" if orientation >= 5 else f"{width}x{height}"  # stored if upright, and back
    if exif:
        verb, how = ORIENTATIONS[orientation]
        return (f"{text} as displayed (its EXIF orientation {orientation} {verb} the stored {other} pixels "
                f"{how}; both are read upright)")
    return (f"{text} as stored (its EXIF orientation {orientation}, which displays it as {other}, is ignored: "
            "EXIF is off)")


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
        mask = self.preprocessing.squashed_mask(foreground)
        if not mask.any():
            issues.append("empty")
        elif mask.all():
            issues.append("full")
        return {"image": self.preprocessing.segmentation_image(image.convert("RGB")),
                "mask": torch.from_numpy(mask), "index": index, "key": key, "size": torch.tensor(image.size),
                "stat": torch.tensor(stat, dtype=torch.long), "digest": digest,
                "mask_issue": ",".join(issues), "error": ""}

    def _failed(self, index: int, key: str, error: Exception) -> dict:
        return {"image": torch.zeros(3, self.size, self.size),
                "mask": torch.zeros(self.size, self.size, dtype=torch.bool), "index": index, "key": key,
                "size": torch.zeros(2, dtype=torch.long),
                "stat": torch.tensor(self.stat(index), dtype=torch.long), "digest": "", "mask_issue": "",
                "error": str(error)}


class MaskFolder(_Pairs):
    def __init__(self, images_dir, masks_dir, preprocessing: Preprocessing | None = None, half: str | None = None):
        super().__init__(preprocessing)
        self.stems, self.images, self.masks = pair_by_stem(Path(images_dir), Path(masks_dir), half)
        self._keys = unique_keys([self.images[stem] for stem in self.stems])

    def __len__(self) -> int:
        return len(self.stems)

    def keys(self) -> list[str]:
        return list(self._keys)

    def stat(self, index: int) -> list[int]:
        stem = self.stems[index]
        return fingerprint(self.images[stem]) + fingerprint(self.masks[stem])

    def _read(self, index: int) -> tuple[bytes, bytes]:
        stem = self.stems[index]
        paths = (self.images[stem], self.masks[stem])
        try:
            return tuple(path.read_bytes() for path in paths)
        except OSError as error:
            raise ValueError(f"cannot read {printable(error.filename)}: {error.strerror}") from None

    def digest(self, index: int) -> str:
        return _digest(*self._read(index))

    def __getitem__(self, index: int) -> dict:
        stem, key = self.stems[index], self._keys[index]
        reader, threshold = self.preprocessing.reader, self.preprocessing.mask_threshold
        try:
            stat = self.stat(index)
            image_bytes, mask_bytes = self._read(index)
            image, image_orientation = reader.decode(image_bytes, self.images[stem])
            foreground, mask_orientation, issues = read_mask(mask_bytes, self.masks[stem], reader, threshold)
            if foreground.shape != (image.height, image.width):
                mask_as_read = _as_read("mask", self.masks[stem], foreground.shape[::-1], mask_orientation,
                                        reader.exif)
                image_as_read = _as_read("image", self.images[stem], image.size, image_orientation, reader.exif)
                raise ValueError(f"{mask_as_read} but {image_as_read}")
        except ValueError as error:
            return self._failed(index, key, error)
        return self._item(index, key, stat, _digest(image_bytes, mask_bytes), image, foreground, issues)

    def describe(self, index: int) -> str:
        stem = self.stems[index]
        return f"{printable(self.images[stem])} with mask {printable(self.masks[stem])}"


class ImagenetSegMat(_Pairs):
    def __init__(self, path, preprocessing: Preprocessing | None = None):
        super().__init__(preprocessing)
        import h5py

        self.path = Path(path)
        self._file = None
        if not self.path.is_file():
            raise FileNotFoundError(f"{printable(self.path)} does not exist")
        try:
            with h5py.File(self.path, "r") as handle:
                self.count = handle["value/img"].shape[0]
                if handle["value/gt"].shape[0] != self.count:
                    raise ValueError(f"{printable(self.path)}: /value/img has {self.count} entries but /value/gt "
                                     f"has {handle['value/gt'].shape[0]}")
        except (OSError, KeyError) as error:
            raise ValueError(f"{printable(self.path)} is not an ImageNet-segmentation .mat file (HDF5 with "
                             f"/value/img and /value/gt): {error}") from error

    def __len__(self) -> int:
        return self.count

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def keys(self) -> list[str]:
        return [f"{index:05d}" for index in range(self.count)]

    def stat(self, index: int) -> list[int]:
        return fingerprint(self.path)

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import h5py

        if self._file is None:  # opened lazily: one handle per DataLoader worker
            self._file = h5py.File(self.path, "r")
        f = self._file
        image = np.array(f[f["value/img"][index, 0]]).transpose(2, 1, 0)
        mask = np.array(f[f[f["value/gt"][index, 0]][0, 0]]).transpose(1, 0)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{printable(self.path)} entry {index}: image {image.shape[:2]} and mask "
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
        foreground, issues = binarise(mask, self.preprocessing.mask_threshold)
        return self._item(index, key, self.stat(index), _digest(image.tobytes(), mask.tobytes()),
                          Image.fromarray(image), foreground, issues)

    def describe(self, index: int) -> str:
        return f"{printable(self.path)} entry {index}"


def segmentation_dataset(spec: str, preprocessing: Preprocessing | None = None) -> Dataset:
    """'ecssd:FOLDER' (FOLDER/images + FOLDER/masks), 'masks:IMAGES,MASKS' (either
    with ':even' / ':odd' for a half) or 'imagenet-seg:FILE.mat', read with the protocol's resize of `preprocessing`
    (see Preprocessing.for_segmentation)."""
    kind, paths, half = locate(spec)
    if kind == "imagenet-seg":
        return ImagenetSegMat(paths[0], preprocessing)
    return MaskFolder(*paths, preprocessing, half)
