"""Datasets and transforms."""
from .folders import list_images, parse_folder_spec
from .imagenet import LabelledImageFolder
from .segmentation import ImagenetSegMat, MaskFolder, canonical_spec, segmentation_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImagenetSegMat", "LabelledImageFolder", "MaskFolder",
           "canonical_spec", "segmentation_dataset", "eval_transform", "list_images",
           "load_rgb", "parse_folder_spec"]
