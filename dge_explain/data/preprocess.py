"""Preprocessing from the model: mean, std, interpolation, crop and input size
come from the model's timm pretrained config (``timm.data.resolve_model_data_config``;
the shipped DGE models declare their own), each overridable by the user.

* classification (``classification_transform``): resize the short side to
  floor(size / crop_pct) and centre-crop (crop_mode 'center'), or resize both
  sides to that and centre-crop ('squash'), as timm's evaluation transform;
* soft-segmentation protocol (``segmentation_image``): the whole image resized
  to size x size with PIL (bilinear unless overridden, as Chefer et al.), so
  that it stays aligned with its mask; no crop.

It also carries how the user's files are read, so that a run's settings record
it: ``exif`` (apply the EXIF orientation), ``max_image_pixels`` (the
decompression-bomb limit; see ``transforms.Reader``) and ``mask_threshold`` (the
grey level from which a mask that is not two-level is foreground; see
``segmentation.binarise``).  These come from the user, never from the model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from .transforms import Reader

INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
CROP_MODES = ("center", "squash")
SEGMENTATION_INTERPOLATION = "bilinear"
MID_GREY = 128
READING = ("exif", "mask_threshold", "max_image_pixels")


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    crop_mode: str = "center"
    source: str = "given"
    exif: bool = True
    mask_threshold: int = MID_GREY
    max_image_pixels: int | None = None

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop mode {self.crop_mode!r} is not supported; supported: {', '.join(CROP_MODES)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got mean {self.mean}, std {self.std}")
        if self.input_size < 1:
            raise ValueError(f"input size must be at least 1, got {self.input_size}")
        if isinstance(self.mask_threshold, bool) or not isinstance(self.mask_threshold, int) or \
                not 1 <= self.mask_threshold <= 255:
            # 0 would make every pixel of a non-binary mask foreground
            raise ValueError(f"mask threshold must be a grey level in 1..255 (foreground = level >= it), "
                             f"got {self.mask_threshold!r}")
        _ = self.reader  # refuses a bad exif or max_image_pixels now, not at the first image read

    @property
    def reader(self) -> Reader:
        """The rules image and mask files are read by."""
        return Reader(self.exif, self.max_image_pixels)

    @classmethod
    def of(cls, model: torch.nn.Module, **overrides) -> "Preprocessing":
        """The model's timm data config with the given overrides (None = keep)."""
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(model)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        tag = cfg.get("tag") if cfg.get("tag") else cfg.get("architecture")
        values = dict(input_size=int(config["input_size"][-1]), mean=tuple(float(v) for v in config["mean"]),
                      std=tuple(float(v) for v in config["std"]), interpolation=config["interpolation"],
                      crop_pct=float(config["crop_pct"]), crop_mode=config.get("crop_mode") or "center",
                      source=f"timm data config of {type(model).__name__}" + (f" ({tag})" if tag else ""))
        given = {k: v for k, v in overrides.items() if v is not None}
        for key in ("mean", "std"):
            if key in given:
                given[key] = tuple(float(v) for v in given[key])
        overridden = sorted(k for k in given if k not in READING)  # reading rules are never the model's
        if overridden:
            values["source"] += "; overridden: " + ", ".join(overridden)
        return cls(**{**values, **given})

    def with_overrides(self, **overrides) -> "Preprocessing":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [..., 3, H, W] (0-255) -> normalised float32."""
        mean = torch.tensor(self.mean, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(3, 1, 1)
        return (images.float() / 255 - mean) / std

    def denormalise(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised [3, H, W] tensor back to [0, 1]."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (image.detach().cpu() * std + mean).clamp(0, 1)

    def classification_geometry(self):
        """PIL image -> uint8 tensor [3, size, size]: resize, then centre crop."""
        scale = math.floor(self.input_size / self.crop_pct)
        mode = T.InterpolationMode(self.interpolation)
        resize = T.Resize(scale if self.crop_mode == "center" else (scale, scale), interpolation=mode,
                          antialias=True)
        return T.Compose([T.ToImage(), resize, T.CenterCrop(self.input_size)])

    def classification_transform(self) -> "ClassificationTransform":
        """PIL image -> normalised float tensor [3, size, size]."""
        return ClassificationTransform(self)

    def for_segmentation(self, interpolation: str | None = None) -> "Preprocessing":
        """The protocol's input: the whole image squashed to input_size x input_size
        (no crop), bilinear unless `interpolation` is given; mean and std kept."""
        chosen = interpolation or SEGMENTATION_INTERPOLATION
        return replace(self, interpolation=chosen, crop_pct=1.0, crop_mode="squash",
                       source=self.source + f"; segmentation protocol: whole image resized, {chosen}")

    def segmentation_image(self, image: Image.Image) -> torch.Tensor:
        """The whole RGB image resized to input_size x input_size with PIL (as
        torchvision's Resize of a PIL image in Chefer et al.'s pipeline), normalised."""
        resized = image.resize((self.input_size, self.input_size), INTERPOLATIONS[self.interpolation])
        return self.normalise(torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1))


    def model_input(self, image: Image.Image) -> torch.Tensor:
        """An RGB image as the model sees it: the protocol's whole-image resize (crop
        fraction 1, squash), or the classification resize and centre crop."""
        if self.crop_mode == "squash" and self.crop_pct == 1:
            return self.segmentation_image(image)
        return self.normalise(self.classification_geometry()(image))

    def squashed_mask(self, foreground: np.ndarray) -> np.ndarray:
        """A bool mask [H, W] resized to input_size x input_size as the protocol does
        (PIL's nearest neighbour, which samples pixel centres)."""
        resized = Image.fromarray(foreground.astype(np.uint8)).resize((self.input_size, self.input_size),
                                                                      Image.NEAREST)
        return np.asarray(resized) > 0

    def mask_on_input(self, foreground: np.ndarray) -> np.ndarray:
        """A bool mask [H, W] carried to the input grid as `model_input` carries its
        image: nearest-neighbour sampling (the protocol's for the squash)."""
        if self.crop_mode == "squash" and self.crop_pct == 1:
            return self.squashed_mask(foreground)
        scale = math.floor(self.input_size / self.crop_pct)
        resize = T.Resize(scale if self.crop_mode == "center" else (scale, scale),
                          interpolation=T.InterpolationMode.NEAREST)
        mask = T.CenterCrop(self.input_size)(resize(torch.from_numpy(foreground.astype(np.uint8))[None]))
        return mask[0].numpy() > 0


class ClassificationTransform:
    """Picklable (DataLoader workers may be spawned) PIL -> normalised tensor."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self.geometry = preprocessing.classification_geometry()

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.preprocessing.normalise(self.geometry(image))
