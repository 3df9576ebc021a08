"""Explainers: one interface, maps [B, H, W] at input resolution for a batch.

Every explainer is called as ``explainer(images, indices)`` and returns a dict
{method name: maps}; ``indices`` (the images' positions in the dataset) make
seeded methods independent of batching and of the process split.
"""
from .gating import GatingMaps
from .gradcam import GradCAMMaps, gradcam_target_layer
from .random import RandomMaps

__all__ = ["GatingMaps", "GradCAMMaps", "RandomMaps", "gradcam_target_layer"]
