"""The map methods an evaluation accepts, parsed from their command-line names.

Plain Python, so that the command line can describe them without importing
the explainers (torch, pytorch-grad-cam)."""
from __future__ import annotations

METHOD_HELP = ("gating[:L1,L2,...] (p_fine; default all layers), gating-margin[:...], "
               "gating-density[:...], gradcam, random")
KINDS = ("gating", "gating-margin", "gating-density", "gradcam", "random")


def parse_method(method: str) -> tuple[str, list[int] | None]:
    """'gating:1,4,8' -> ('gating', [1, 4, 8]); layers are None when not given."""
    kind, _, arg = method.strip().lower().partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown method '{method}'; methods: {METHOD_HELP}")
    if arg and not kind.startswith("gating"):
        raise ValueError(f"method '{method}' takes no layers; methods: {METHOD_HELP}")
    try:
        layers = [int(v) for v in arg.split(",")] if arg else None
    except ValueError:
        raise ValueError(f"method '{method}': layers must be comma-separated integers, "
                         f"e.g. gating:1,4,8 ({METHOD_HELP})") from None
    return kind, layers
