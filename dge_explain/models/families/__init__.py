"""One adapter per backbone family (token grid, blocks, extra tokens, CAM target
layer, complexity terms, checkpoint conversion).  A new family = its model file
under dge_explain/models/ + one adapter file here, added to FAMILIES."""
from __future__ import annotations

from torch import nn

from .base import BackboneAdapter, SizeRule
from .dpvt import DPVTAdapter
from .pvt import PVTAdapter
from .vit import ViTAdapter

# tried in order: the first adapter that matches a model serves it (DPVT subclasses PVT)
FAMILIES: list[BackboneAdapter] = [DPVTAdapter(), PVTAdapter(), ViTAdapter()]


def find_adapter(model: nn.Module) -> BackboneAdapter | None:
    return next((adapter for adapter in FAMILIES if adapter.matches(model)), None)


def adapter_for(model: nn.Module) -> BackboneAdapter:
    adapter = find_adapter(model)
    if adapter is None:
        raise ValueError(f"{type(model).__name__} belongs to no known backbone family "
                         f"({', '.join(a.family for a in FAMILIES)}): add an adapter under "
                         "dge_explain/models/families/")
    return adapter


def model_name(model: nn.Module) -> str:
    """timm's architecture name (and the class, which tells a DGE conversion apart)."""
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"{architecture} ({type(model).__name__})" if architecture else type(model).__name__


def check_image_size(model: nn.Module, size) -> None:
    """Refuses an input size (height, width) the model's forward cannot take, naming
    the valid sizes, before any forward; a model of no known family passes."""
    adapter = find_adapter(model)
    height, width = (int(side) for side in size)
    problem = adapter.size_rule(model).problem(height, width) if adapter is not None else None
    if problem:
        raise ValueError(f"input {height}x{width} does not fit {model_name(model)}: {problem}")


__all__ = ["FAMILIES", "BackboneAdapter", "SizeRule", "adapter_for", "check_image_size", "find_adapter",
           "model_name"]
