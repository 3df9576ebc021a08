"""One adapter per backbone family (token grid, blocks, extra tokens, CAM target
layer, complexity terms, checkpoint conversion).  A new family = its model file
under dge_explain/models/ + one adapter file here, added to FAMILIES."""
from __future__ import annotations

from torch import nn

from .base import BackboneAdapter
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


__all__ = ["FAMILIES", "BackboneAdapter", "adapter_for", "find_adapter"]
