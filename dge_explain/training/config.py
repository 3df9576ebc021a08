"""Settings of a router-distillation run (``dge-explain train``).

Kept apart from the training loop so that the command line can show the
defaults without importing torch or timm."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from dge_explain import paths

DEFAULT_IMAGES = ("data/ecssd/images", "data/imagenet-sample:even")
DEFAULT_WEIGHTS = "weights/deit_tiny_patch16_224.safetensors"


@dataclass
class TrainConfig:
    out: str
    weights: str | None = None            # dense checkpoint; default $DGE_EXPLAIN_HOME/weights/...
    dense_model: str = "deit_tiny_patch16_224"
    phi: tuple[int, ...] = (1, 2)
    images: tuple[str, ...] = ()          # folder specs; default ECSSD + imagenet-sample:even
    image_size: int = 224
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-2                      # routers
    backbone_lr: float = 3e-4             # any other trained group (pretrained weights)
    schedule: str = "cosine"              # cosine | constant
    warmup_steps: int = 20
    weight_decay: float = 0.0
    gamma: float = 0.5
    budget_weight: float = 4.0
    temperature: float = 1.0
    train: tuple[str, ...] = ("routers", "norms", "biases")
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    max_steps: int | None = None
    device: str = "cpu"
    amp: bool = False
    home: str | None = None
    # Preprocessing overrides; None = the dense model's timm data config.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    def resolved(self) -> "TrainConfig":
        """Defaults that depend on the data home filled in; paths made absolute."""
        weights = str(Path(self.weights).resolve()) if self.weights else \
            str(paths.home_file(DEFAULT_WEIGHTS, self.home))
        images = self.images or tuple(str(paths.home(self.home) / spec) for spec in DEFAULT_IMAGES)
        images = [_absolute_spec(spec) for spec in images]
        too_small = {name: getattr(self, name) for name in ("epochs", "batch_size", "checkpoint_every",
                                                             "max_steps", "image_size")
                     if getattr(self, name) is not None and getattr(self, name) < 1}
        if too_small:
            raise ValueError(f"these settings must be at least 1: {too_small}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.amp and not self.device.startswith("cuda"):
            raise ValueError("--amp needs a CUDA device")
        return dataclasses.replace(self, weights=weights, images=tuple(images),
                                   phi=tuple(self.phi), train=tuple(self.train),
                                   mean=None if self.mean is None else tuple(self.mean),
                                   std=None if self.std is None else tuple(self.std))


def _absolute_spec(spec: str) -> str:
    from dge_explain.data.folders import parse_folder_spec  # the data package imports torch

    folder, half = parse_folder_spec(spec)
    return str(folder.resolve()) + (f":{half}" if half else "")
