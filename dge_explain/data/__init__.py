"""Datasets and transforms."""
from .imagenet import LabelledImageFolder
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LabelledImageFolder", "eval_transform", "load_rgb"]
