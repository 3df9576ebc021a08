"""Explainers: objects meeting the contract of ``base.Explainer`` (``names()``,
``describe()``, ``class_specific`` and a call ``(images, ids, labels=None) ->
{name: maps [B, H, W]}`` at input resolution).

``build_explainers(model, names)`` makes them from method names (the registry of
``dge_explain.methods``: one module here per family, each declaring its METHODS);
``batch_maps`` computes every explainer's maps of a batch, sharing passes as the
explainers declare (``shared_pass``, ``rides_along``).
"""
from __future__ import annotations

import importlib

from torch import nn

from dge_explain.methods import merge_methods, registry

from .attention_capture import AttentionExplainer
from .base import Explainer, batch_maps
from .cam import CAMMaps, token_grid
from .gating import GatingMaps
from .random import RandomMaps

__all__ = ["AttentionExplainer", "CAMMaps", "Explainer", "GatingMaps", "RandomMaps", "batch_maps",
           "build_explainers", "describe_maps", "methods_of_run", "token_grid"]


def build_explainers(model: nn.Module, methods, seed: int = 0) -> list[Explainer]:
    """Explainers for method names; the same set of maps however the names are
    ordered or split (gating:4,8 = gating:8 gating:4)."""
    by_module: dict[str, dict] = {}
    for kind, layers in merge_methods(methods).items():
        by_module.setdefault(registry()[kind].module, {})[kind] = layers
    explainers = []
    for module, requests in by_module.items():
        explainers += importlib.import_module(f"{__name__}.{module}").build(model, requests, seed)
    names = [n for e in explainers for n in e.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"methods {list(methods)} name the same map twice: {names}")
    return explainers


def methods_of_run(settings: dict) -> list[str]:
    """Method names that rebuild the explainers of a run's settings ("maps")."""
    layers: dict[str, list[int]] = {}
    methods = []
    for config in settings["maps"].values():
        if config["method"] == "gating":
            kind = "gating" if config["score"] == "fine" else f"gating-{config['score']}"
            layers.setdefault(kind, []).append(config["layer"])
        elif "layer" in config:   # another method of chosen layers (e.g. tome-size)
            layers.setdefault(config["method"], []).append(config["layer"])
        else:
            methods.append(config["method"])
    return sorted(set(methods)) + [f"{kind}:{','.join(map(str, sorted(ls)))}" for kind, ls in sorted(layers.items())]


def describe_maps(explainers: list) -> dict[str, dict]:
    """The settings of every map, by name, in name order (so that the same set of
    maps compares equal however it was asked for)."""
    return dict(sorted((name, config) for e in explainers for name, config in e.describe().items()))
