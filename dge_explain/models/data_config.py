"""The evaluation data config that the DGE paper's models were trained and
evaluated with (DeiT's: ImageNet mean and std, the short side resized bicubically
to size / 0.875, centre crop), in timm's pretrained_cfg form, so that
``timm.data.resolve_model_data_config`` finds it on the models built here."""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def deit_eval_config(architecture: str, input_size: int) -> dict:
    return {"architecture": architecture, "tag": "dge-explain", "input_size": (3, input_size, input_size),
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "interpolation": "bicubic",
            "crop_pct": 0.875, "crop_mode": "center", "num_classes": 1000}
