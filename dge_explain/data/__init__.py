"""Datasets, preprocessing and image reading.

Imported lazily, so that the torch-free parts (``listing``, ``folders``) serve the
command line's argument checks before torch loads."""
from __future__ import annotations

import importlib

_HOMES = {
    "ImagenetSegMat": "segmentation", "MaskFolder": "segmentation", "segmentation_dataset": "segmentation",
    "LabelledImageFolder": "imagenet", "IdentifiedImages": "imagenet", "Preprocessing": "preprocess",
    "canonical_spec": "listing",
    "list_images": "folders", "parse_folder_spec": "folders", "load_rgb": "transforms",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
