"""How results are named and laid out for people: method titles, the paper's
column order (random, the baselines, then gating layers), Markdown tables."""
from __future__ import annotations

import re

from dge_explain.methods import registry

GATING_NAME = re.compile(r"^layer(\d+)(?:-(\w+))?$")
LAYER_NAME = re.compile(r"^(.+)-layer(\d+)$")


def gating_layer(name: str) -> tuple[int, str] | None:
    """'layer8' -> (8, ''), 'layer8-margin' -> (8, 'margin'); None for other maps."""
    match = GATING_NAME.match(name)
    return (int(match.group(1)), match.group(2) or "") if match else None


def map_method(name: str) -> tuple[str, int | None]:
    """(the registered method that makes a map, its layer or None), from the map's
    name: 'layer8-margin' -> ('gating-margin', 8), 'tome-size-layer3' -> ('tome-size', 3),
    'gradcam' -> ('gradcam', None)."""
    gating = gating_layer(name)
    if gating:
        return ("gating-" + gating[1]).rstrip("-"), gating[0]
    layered = LAYER_NAME.match(name)
    if layered and layered.group(1) in registry():
        return layered.group(1), int(layered.group(2))
    return name, None


def method_title(name: str) -> str:
    gating = gating_layer(name)
    if gating:
        return f"Layer {gating[0]}" + (f" ({gating[1]})" if gating[1] else "")
    method, layer = map_method(name)
    title = registry()[method].title if method in registry() else name
    return title if layer is None else f"{title} (layer {layer})"


def ordered_names(names) -> list[str]:
    """Random, the attention baselines, the CAMs, then gating layers (p_fine, margin,
    density): the paper's tables put random first and the layers last."""
    rank = {name: i for i, name in enumerate(registry())}
    scores = {"": 0, "margin": 1, "density": 2}

    def key(name):
        gating = gating_layer(name)
        if gating:
            return (1, scores.get(gating[1], 3), gating[0], name)
        method, layer = map_method(name)
        return (0, rank.get(method, len(rank)), layer or 0, name)

    return sorted(names, key=key)


def markdown_table(result) -> str:
    names = list(result.methods)
    lines = ["| Metric | " + " | ".join(method_title(n) for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for metric in ("Accuracy", "mAP", "mIoU"):
        lines.append(f"| {metric} | " + " | ".join(f"{result.methods[n][metric]:.1f}" for n in names) + " |")
    return "\n".join(lines)
