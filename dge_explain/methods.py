"""The explainers an evaluation accepts, by name, found without importing them.

Every module of ``dge_explain/explain/`` that defines a module-level dict literal
``METHODS = {"name": "help", ...}`` provides those methods through its
``build(model, requests, seed)`` function (requests: {name: layers or None});
a name written ``"name:LAYERS"`` takes an optional comma-separated list of layers
(``gating:1,4,8``).  The modules are read here as source (``ast``), not imported,
so that the command line can list and check method names before torch loads:
adding an explainer is adding one such file (and its tests).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

EXPLAIN_DIR = Path(__file__).resolve().parent / "explain"


@lru_cache(maxsize=1)
def registry() -> dict[str, tuple[str, bool, str]]:
    """name -> (module under dge_explain.explain, takes layers, help)."""
    found: dict[str, tuple[str, bool, str]] = {}
    for path in sorted(EXPLAIN_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "METHODS" for t in node.targets):
                for key, value in ast.literal_eval(node.value).items():
                    name, _, layers = key.partition(":")
                    if name in found:
                        raise RuntimeError(f"method {name!r} is defined by {found[name][0]} and {path.stem}")
                    found[name] = (path.stem, bool(layers), value)
    return found


def method_help() -> str:
    return ", ".join(f"{name}[:L1,L2,...]" if layers else name for name, (_, layers, _) in registry().items())


def parse_method(method: str) -> tuple[str, list[int] | None]:
    """'gating:1,4,8' -> ('gating', [1, 4, 8]); layers are None when not given.
    Case and surrounding spaces do not matter."""
    kind, _, arg = method.strip().lower().partition(":")
    known = registry()
    if kind not in known:
        raise ValueError(f"unknown method '{method}'; methods: {method_help()}")
    if arg and not known[kind][1]:
        raise ValueError(f"method '{method}' takes no layers; methods: {method_help()}")
    try:
        layers = [int(v) for v in arg.split(",")] if arg else None
    except ValueError:
        raise ValueError(f"method '{method}': layers must be comma-separated integers, "
                         f"e.g. gating:1,4,8 ({method_help()})") from None
    return kind, layers


def merge_methods(methods) -> dict[str, list[int] | None]:
    """The requested methods with repeats merged (no layers = all layers), in first-seen
    order: ['gating:8', 'random', 'gating:4'] -> {'gating': [4, 8], 'random': None}."""
    merged: dict[str, list[int] | None] = {}
    for method in methods:
        kind, layers = parse_method(method)
        if kind in merged and (merged[kind] is None or layers is None):
            merged[kind] = None
        elif kind in merged:
            merged[kind] = sorted(set(merged[kind]) | set(layers))
        else:
            merged[kind] = None if layers is None else sorted(set(layers))
    return merged
