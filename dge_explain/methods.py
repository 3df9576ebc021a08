"""The explainers an evaluation accepts, by name, found without importing them.

Every module of ``dge_explain/explainers/`` that defines a module-level dict literal
``METHODS = {"name": {"title": ..., "help": ..., "passes": ..., "units": ...,
"scale": ...}, ...}`` provides
those methods through its ``build(model, requests, seed)`` function (requests:
{name: layers or None}); a name written ``"name:LAYERS"`` takes an optional
comma-separated list of layers (``gating:1,4,8``) or ``all``; without one, the
method's own default layers.  ``passes`` says what a method
costs: "none", "attention" (the shared attention pass), "gradients" (the shared
pytorch-grad-cam forward and backward), "forward", "per-channel" (a pass per
channel of the target layer) or "rides" (read during another method's pass).
The modules are read here as source (``ast``), not imported, so that the command
line can list and check method names before torch loads: adding an explainer is
adding one such file (and its tests); this registry is the only list of names.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

EXPLAIN_DIR = Path(__file__).resolve().parent / "explainers"
PASSES = ("none", "attention", "gradients", "forward", "per-channel", "rides")
# the paper's column order: random first, the baselines, the gating layers last
FAMILY_RANK = {"none": 0, "attention": 1, "gradients": 2, "forward": 2, "per-channel": 2, "rides": 3}


class Method(NamedTuple):
    module: str          # under dge_explain.explainers
    takes_layers: bool
    title: str
    help: str
    passes: str
    units: str               # how a map's values read (p_fine, logits, CAM, ...)
    scale: float | None      # the span a map of this kind can take; None: its own peak |value|

    @property
    def baseline(self) -> bool:
        """One of the field's explainers (every method but the gating maps)."""
        return self.passes != "rides"


@lru_cache(maxsize=1)
def registry() -> dict[str, Method]:
    """name -> Method, ordered as the paper's tables order their columns."""
    found: dict[str, Method] = {}
    for path in sorted(EXPLAIN_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "METHODS" for t in node.targets):
                for key, value in ast.literal_eval(node.value).items():
                    name, _, layers = key.partition(":")
                    if name in found:
                        raise RuntimeError(f"method {name!r} is defined by {found[name].module} and {path.stem}")
                    if value.get("passes") not in PASSES or not all(value.get(k) for k in ("title", "help", "units")) \
                            or "scale" not in value:
                        raise RuntimeError(f"{path}: METHODS[{key!r}] needs a title, a help, units, a scale and "
                                           f"passes in {PASSES}")
                    found[name] = Method(path.stem, bool(layers), value["title"], value["help"], value["passes"],
                                         value["units"], value["scale"])
    order = sorted(found, key=lambda n: FAMILY_RANK[found[n].passes])
    return {name: found[name] for name in order}


def method_help() -> str:
    return ", ".join(f"{name}[:L1,L2,...|:all]" if layers else name for name, method in registry().items()
                     for layers in [method.takes_layers])


ALL_LAYERS = "all"          # gating:all = every layer
DEFAULT_LAYERS = "default"  # what a method's name without layers gives (merged with other requests)


def parse_method(method: str) -> tuple[str, list | None]:
    """'gating:1,4,8' -> ('gating', [1, 4, 8]); 'gating:all' -> ('gating', ['all']);
    layers are None when not given (the method's default layers).  Case and
    surrounding spaces do not matter."""
    kind, _, arg = method.strip().lower().partition(":")
    known = registry()
    if kind not in known:
        raise ValueError(f"unknown method '{method}'; methods: {method_help()}")
    if arg and not known[kind].takes_layers:
        raise ValueError(f"method '{method}' takes no layers; methods: {method_help()}")
    if arg.strip() == ALL_LAYERS:
        return kind, [ALL_LAYERS]
    try:
        layers = [int(v) for v in arg.split(",")] if arg else None
    except ValueError:
        raise ValueError(f"method '{method}': layers must be comma-separated integers or 'all', "
                         f"e.g. gating:1,4,8 ({method_help()})") from None
    return kind, layers


def merge_methods(methods) -> dict[str, list | None]:
    """The requested methods with repeats merged, in first-seen order: ['gating:8',
    'random', 'gating:4'] -> {'gating': [4, 8], 'random': None}; a name without layers
    (None: the method's default layers) asked beside chosen ones stays as 'default':
    ['gating', 'gating:4'] -> {'gating': [4, 'default']}."""
    merged: dict[str, set | None] = {}
    for method in methods:
        kind, layers = parse_method(method)
        if kind not in merged:
            merged[kind] = None if layers is None else set(layers)
        elif merged[kind] is None and layers is None:
            continue
        else:
            merged[kind] = (merged[kind] or {DEFAULT_LAYERS}) | set(layers or [DEFAULT_LAYERS])
    return {kind: None if layers is None else sorted(layers, key=lambda l: (isinstance(l, str), l))
            for kind, layers in merged.items()}


def resolve_layers(requested, depth: int, default) -> tuple[int, ...]:
    """Layer numbers (sorted, 1-based, not checked against `depth`) of a request:
    None (the method's `default` layers), 'all', or a list of ints, 'all' and 'default'."""
    chosen: set[int] = set()
    requested = [DEFAULT_LAYERS] if requested is None else [requested] if isinstance(requested, str) else requested
    for layer in requested:
        if layer == ALL_LAYERS:
            chosen.update(range(1, depth + 1))
        elif layer == DEFAULT_LAYERS:
            chosen.update(default)
        else:
            chosen.add(int(layer))
    return tuple(sorted(chosen))
