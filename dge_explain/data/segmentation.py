"""Image/mask pairs for scoring maps as soft segmentations.

* ``MaskFolder(images_dir, masks_dir)``: files paired by stem (ECSSD layout:
  images/NNNN.jpg with masks/NNNN.png); foreground = mask > 0.
* ``ImagenetSegMat(path)``: the ImageNet-segmentation ``gtsegs_ijcv.mat`` of
  Guillaumin et al. used by Chefer et al.: MATLAB v7.3 (HDF5) with object
  references under /value/img (one per image) and /value/gt (a reference to a
  cell holding the mask); arrays are stored transposed (column-major).

Both return (image [3, S, S] normalised, mask [S, S] bool, index, name) with the
image resized bilinearly and the mask by nearest neighbour to S x S (the
model's input), as in Chefer et al.'s evaluation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from .folders import IMAGE_SUFFIXES
from .transforms import IMAGENET_MEAN, IMAGENET_STD, load_rgb


class _Resized(Dataset):
    def __init__(self, size: int):
        self.size = size
        self.normalise = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def _pair(self, image: Image.Image | np.ndarray, mask: np.ndarray, index: int, name: str):
        image_t = TF.to_image(image)
        image_t = TF.resize(image_t, [self.size, self.size], interpolation=T.InterpolationMode.BILINEAR,
                            antialias=True)
        image_t = self.normalise(TF.to_dtype(image_t, torch.float32, scale=True))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask > 0))[None]
        mask_t = TF.resize(mask_t, [self.size, self.size], interpolation=T.InterpolationMode.NEAREST)[0]
        return image_t, mask_t, index, name


def _by_stem(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    by_stem = {p.stem: p for p in files}
    if len(by_stem) != len(files):
        twins = sorted({p.name for p in files if sum(q.stem == p.stem for q in files) > 1})
        raise ValueError(f"{folder} holds several files per name, which cannot be paired: {twins[:6]}")
    return by_stem


class MaskFolder(_Resized):
    def __init__(self, images_dir, masks_dir, size: int = 224):
        super().__init__(size)
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"folder {folder} does not exist")
        images, masks = _by_stem(images_dir), _by_stem(masks_dir)
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            where = [str(images.get(s) or masks.get(s)) for s in unpaired[:5]]
            raise ValueError(f"{len(unpaired)} file(s) without a partner between {images_dir} and "
                             f"{masks_dir}: {', '.join(where)}")
        if not images:
            raise ValueError(f"{images_dir} holds no images")
        self.stems = sorted(images)
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int):
        stem = self.stems[index]
        image = load_rgb(self.images[stem])
        try:
            with Image.open(self.masks[stem]) as handle:
                mask = np.asarray(handle.convert("L"))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read mask {self.masks[stem]}: {error}") from error
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {self.masks[stem]} is {mask.shape[1]}x{mask.shape[0]} but image "
                             f"{self.images[stem]} is {image.width}x{image.height}")
        return self._pair(image, mask, index, stem)


class ImagenetSegMat(_Resized):
    def __init__(self, path, size: int = 224):
        super().__init__(size)
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
        if self._file is not None:
            self._file.close()

    def __getitem__(self, index: int):
        import h5py

        if self._file is None:  # opened lazily: one handle per DataLoader worker
            self._file = h5py.File(self.path, "r")
        f = self._file
        image = np.array(f[f["value/img"][index, 0]]).transpose(2, 1, 0)
        mask = np.array(f[f[f["value/gt"][index, 0]][0, 0]]).transpose(1, 0)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{self.path} entry {index}: image {image.shape[:2]} and mask "
                             f"{mask.shape} differ in size")
        return self._pair(np.ascontiguousarray(image.astype(np.uint8)), mask, index, f"{index:05d}")


DATASET_KINDS = ("ecssd", "masks", "imagenet-seg")


def canonical_spec(spec: str) -> str:
    """The dataset spec with absolute, resolved paths (to compare runs)."""
    kind, _, location = spec.partition(":")
    if kind not in DATASET_KINDS or not location:
        raise ValueError(f"dataset '{spec}' must be KIND:PATH with KIND one of {', '.join(DATASET_KINDS)}")
    parts = location.split(",") if kind == "masks" else [location]
    return f"{kind}:" + ",".join(str(Path(part).expanduser().resolve()) for part in parts)


def segmentation_dataset(spec: str, size: int = 224) -> Dataset:
    """'ecssd:FOLDER' (FOLDER/images + FOLDER/masks), 'masks:IMAGES,MASKS' or
    'imagenet-seg:FILE.mat'."""
    kind, _, location = canonical_spec(spec).partition(":")
    if kind == "ecssd":
        return MaskFolder(Path(location) / "images", Path(location) / "masks", size)
    if kind == "masks":
        images, _, masks = location.partition(",")
        if not masks:
            raise ValueError(f"dataset '{spec}': give masks:IMAGES_DIR,MASKS_DIR")
        return MaskFolder(images, masks, size)
    return ImagenetSegMat(location, size)
