"""dge-explain: run, explain and benchmark Dynamic Grained Encoder vision transformers.

    import dge_explain
    model = dge_explain.load_model("deit_dge_s12_tiny_patch16_224.distilled")
    maps = dge_explain.explain(model, ["photo.jpg"], methods=("gating:8", "gradcam"))

Importing the package registers its models with timm (``timm.create_model(
"deit_dge_s12_small_patch16_224")`` works after ``import dge_explain``).  It does so
without importing torch or timm itself: the command line's argument checks answer
in well under a second, and the registration runs the moment timm is imported.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__version__ = "0.3.1"
__all__ = ["explain", "load_model", "score", "__version__"]

_API = {"load_model", "explain", "score"}


def __getattr__(name: str):
    if name in _API:
        from dge_explain import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_models(_module=None) -> None:
    import dge_explain.models  # noqa: F401  (its modules register the timm entrypoints)


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when timm is first imported it hands back timm's own
    spec with a loader that registers dge-explain's models right after timm ran."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            run_timm = spec.loader.exec_module

            def exec_module(module):
                run_timm(module)
                _register_models()

            spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(finder, _RegisterWhenTimmLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())
