"""Settings of a router-distillation run (``dge-explain train``).

Kept apart from the training loop so that the command line can show the
defaults without importing torch or timm."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dge_explain import paths
from dge_explain.training.splits import TRAINING as DEFAULT_IMAGES

DEFAULT_WEIGHTS = "weights/deit_tiny_patch16_224.safetensors"


def _setting(default, help: str, **cli):
    """A setting with its command-line help (and, in `cli`, how the flag parses)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Every setting of a run; `dge-explain train` derives one flag from each
    field (its help and parsing from the field's metadata)."""
    out: str = field(metadata={"help": "run folder (checkpoints, log.jsonl, trained.safetensors)"})
    weights: str | None = _setting(None, "dense checkpoint (default $DGE_EXPLAIN_HOME/" + DEFAULT_WEIGHTS + ")")
    dense_model: str = _setting("deit_tiny_patch16_224", "timm name of the dense teacher")
    phi: tuple[int, ...] = _setting((1, 2), "candidate granularities (region sides in tokens)", nargs="+",
                                    type="positive_int")
    images: tuple[str, ...] = _setting((), "image folders (FOLDER, FOLDER:even, FOLDER:odd); default: "
                                           + " and ".join(DEFAULT_IMAGES) + " under $DGE_EXPLAIN_HOME", nargs="*")
    image_size: int = _setting(224, "training resolution", type="positive_int")
    epochs: int = _setting(12, "passes over the images", type="positive_int")
    batch_size: int = _setting(32, "images per step (over all ranks)", type="positive_int")
    lr: float = _setting(2e-2, "learning rate of the routers")
    backbone_lr: float = _setting(3e-4, "learning rate of any other trained group (pretrained weights)")
    schedule: str = _setting("cosine", "learning-rate schedule after the warm-up", choices=("cosine", "constant"))
    warmup_steps: int = _setting(20, "linear warm-up steps", type="non_negative_int")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    gamma: float = _setting(0.5, "MAC budget: the complexity ratio the routers aim at")
    budget_weight: float = _setting(4.0, "lambda of the budget loss")
    temperature: float = _setting(1.0, "distillation temperature T")
    map_target: str | None = _setting(None, "the teacher's maps the routers' p_fine learns to follow (any method "
                                            "the dense teacher can give, e.g. relevance, rollout, attention)")
    map_weight: float = _setting(0.0, "weight of that auxiliary loss: BCE of p_fine against the teacher's map "
                                      "pooled to the router's regions and scaled to 0..1 per image")
    map_layers: tuple[int, ...] = _setting((), "DGE layers (1-based) the auxiliary loss applies to (default: every "
                                               "layer)", nargs="*", type="positive_int")
    train: tuple[str, ...] = _setting(("routers", "norms", "biases"),
                                      "parameter groups to train: routers, norms, biases, head, mlp, attn, "
                                      "or regular expressions over parameter names", nargs="+")
    flip: bool = _setting(True, "random horizontal flips")
    seed: int = _setting(0, "seed of the image order, flips and router initialisation")
    checkpoint_every: int = _setting(50, "steps between checkpoints", type="positive_int")
    max_steps: int | None = _setting(None, "stop after this many steps (smoke runs)", type="positive_int")
    device: str = _setting("cpu", "torch device: cpu, cuda, cuda:1, ...")
    amp: bool = _setting(False, "mixed precision (CUDA)")
    home: str | None = _setting(None, "data home (default $DGE_EXPLAIN_HOME)")
    # Preprocessing overrides; None = the dense model's timm data config.
    mean: tuple[float, float, float] | None = _setting(None, "normalisation mean", preprocessing=True)
    std: tuple[float, float, float] | None = _setting(None, "normalisation std", preprocessing=True)
    interpolation: str | None = _setting(None, "resize filter", preprocessing=True)
    crop_pct: float | None = _setting(None, "centre-crop fraction", preprocessing=True)

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
        if (self.map_weight > 0) != (self.map_target is not None):
            raise ValueError("--map-target and a positive --map-weight go together (the auxiliary map loss)")
        return dataclasses.replace(self, weights=weights, images=tuple(images),
                                   phi=tuple(self.phi), train=tuple(self.train),
                                   map_layers=tuple(self.map_layers),
                                   mean=None if self.mean is None else tuple(self.mean),
                                   std=None if self.std is None else tuple(self.std))


def _absolute_spec(spec: str) -> str:
    from dge_explain.data.folders import parse_folder_spec  # the data package imports torch

    folder, half = parse_folder_spec(spec)
    return str(folder.resolve()) + (f":{half}" if half else "")
