"""Explainers: objects with ``names()``, ``describe()`` (their settings, recorded by
a run) and a call ``(images, ids, labels=None) -> {name: maps [B, H, W]}`` at input
resolution; ``ids`` are the images' identities (seeded methods depend on them, not
on batching), ``labels`` the classes to explain (None: the predicted ones).

``build_explainers(model, names)`` makes them from method names (the registry of
``dge_explain.methods``: one module here per family, each declaring its METHODS);
``batch_maps`` computes every explainer's maps of a batch, sharing passes:
one forward (and backward) with the attention recorded for every attention
explainer, the gating maps read from the routers during that pass or GradCAM's.
"""
from __future__ import annotations

import importlib
from contextlib import ExitStack

import torch
from torch import nn

from dge_explain.methods import merge_methods, registry

from .attention_capture import AttentionExplainer, attention_pass, gradient_blocks
from .cam import CAMMaps, shared_pass, token_grid
from .gating import GatingMaps
from .random import RandomMaps

__all__ = ["AttentionExplainer", "CAMMaps", "GatingMaps", "RandomMaps", "batch_maps", "build_explainers",
           "describe_maps", "methods_of_run", "token_grid"]


def build_explainers(model: nn.Module, methods, seed: int = 0) -> list:
    """Explainers for method names; the same set of maps however the names are
    ordered or split (gating:4,8 = gating:8 gating:4)."""
    by_module: dict[str, dict] = {}
    for kind, layers in merge_methods(methods).items():
        by_module.setdefault(registry()[kind][0], {})[kind] = layers
    explainers = []
    for module, requests in by_module.items():
        explainers += importlib.import_module(f"{__name__}.{module}").build(model, requests, seed)
    names = [n for e in explainers for n in e.names()]
    if len(set(names)) != len(names):
        raise ValueError(f"methods {list(methods)} name the same map twice: {names}")
    return explainers


def batch_maps(explainers: list, images: torch.Tensor, ids, labels=None) -> dict[str, torch.Tensor]:
    """Every explainer's maps of one batch, on the CPU.  Attention explainers share
    one pass (with a backward only as deep as their gradients are needed), the gradient
    CAMs another (one forward and backward of pytorch-grad-cam, each method's class
    weighing the same activations and gradients); the gating maps ride on the first
    of these passes (eval mode, the same logits), or else run their own, cut short
    after the last router.  labels: the classes to explain (None: the predicted ones)."""
    attention = [e for e in explainers if isinstance(e, AttentionExplainer)]
    gating = [e for e in explainers if isinstance(e, GatingMaps)]
    gradient_cams = [e for e in explainers if isinstance(e, CAMMaps) and e.uses_gradients]
    maps, captured = {}, None
    if attention:
        record, captured = attention_pass(attention[0].model, images, labels, gradient_blocks(attention),
                                          gating)
        for explainer in attention:
            maps[explainer.name] = explainer.map_from(record, images)
    if gradient_cams:
        with ExitStack() as stack:
            riding = [] if captured is not None else [stack.enter_context(rider.capturing()) for rider in gating]
            maps.update(shared_pass(gradient_cams, images, labels))
        captured = captured if captured is not None else (riding or None)
    if captured is not None:
        for rider, logits in zip(gating, captured):
            maps.update(rider.maps_from(logits, images.shape[-2:]))
    served = set(attention) | set(gradient_cams) | (set(gating) if captured is not None else set())
    for explainer in explainers:
        if explainer not in served:
            maps.update(explainer(images, ids, labels))
    return {name: m.detach().cpu() for name, m in maps.items()}


def methods_of_run(settings: dict) -> list[str]:
    """Method names that rebuild the explainers of a run's settings ("maps")."""
    layers: dict[str, list[int]] = {}
    methods = []
    for config in settings["maps"].values():
        if config["method"] == "gating":
            kind = "gating" if config["score"] == "fine" else f"gating-{config['score']}"
            layers.setdefault(kind, []).append(config["layer"])
        else:
            methods.append(config["method"])
    return sorted(set(methods)) + [f"{kind}:{','.join(map(str, sorted(ls)))}" for kind, ls in sorted(layers.items())]


def describe_maps(explainers: list) -> dict[str, dict]:
    """The settings of every map, by name, in name order (so that the same set of
    maps compares equal however it was asked for)."""
    return dict(sorted((name, config) for e in explainers for name, config in e.describe().items()))
