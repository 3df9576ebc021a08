"""Which implementation of the DGE ops runs: the compiled extension
(``dge_explain._C``), or the pure-PyTorch reference when the extension is missing.

The reference fallback is slow and exists so that a checkout without a compiler
still works; it is announced with a warning.  ``DGE_EXPLAIN_REQUIRE_EXT=1`` turns a
missing or broken extension into an ImportError instead (CI sets it).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

REQUIRE_ENV = "DGE_EXPLAIN_REQUIRE_EXT"
BACKENDS = ("compiled", "reference")


def _load_extension():
    try:
        from dge_explain import _C  # noqa: F401  (registers torch.ops.dge_explain)
    except ImportError as error:
        if os.environ.get(REQUIRE_ENV) == "1":
            raise ImportError(
                f"{REQUIRE_ENV}=1 but the compiled extension dge_explain._C failed to load: "
                f"{error}. Build it with `make build` (or `python setup.py build_ext --inplace`)."
            ) from error
        return None, f"{type(error).__name__}: {error}"
    return _C, None


_EXTENSION, LOAD_ERROR = _load_extension()
_active = "compiled" if _EXTENSION is not None else "reference"
_warned = False


def active() -> str:
    """Name of the backend the public ops use now."""
    global _warned
    if _active == "reference" and _EXTENSION is None and not _warned:
        warnings.warn(
            f"dge_explain: compiled ops unavailable ({LOAD_ERROR}); using the slow "
            "pure-PyTorch reference ops.", RuntimeWarning, stacklevel=3)
        _warned = True
    return _active


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code on the named backend ('compiled' or 'reference')."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "compiled" and _EXTENSION is None:
        raise RuntimeError(f"the compiled extension is not available: {LOAD_ERROR}")
    previous, _active = _active, name
    try:
        yield
    finally:
        _active = previous


def build_info() -> dict:
    """What was compiled and what can run here."""
    return {
        "active_backend": _active,
        "extension_loaded": _EXTENSION is not None,
        "extension_error": LOAD_ERROR,
        "compiled_cpu": _EXTENSION is not None,
        "compiled_cuda": bool(_EXTENSION is not None and _EXTENSION.with_cuda),
        "extension_cuda_version": getattr(_EXTENSION, "cuda_version", None),
        "extension_torch_version": getattr(_EXTENSION, "torch_version", None),
        "cpu_gemm": getattr(_EXTENSION, "cpu_gemm", None),
        "cuda_limits": _build_limits(),
        "torch_version": torch.__version__,
        "cuda_device_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }


_warned_cuda = False


def _reference_on_cuda() -> None:
    """A build without CUDA kernels meets CUDA tensors: the reference ops would run
    them far slower than the model's own layers, so this is said (once), or refused
    under DGE_EXPLAIN_REQUIRE_EXT=1."""
    global _warned_cuda
    reason = ("dge_explain._C was built without CUDA kernels (no CUDA toolkit at build time, or "
              "DGE_EXPLAIN_CUDA=0); rebuild with CUDA_HOME set and DGE_EXPLAIN_CUDA=1 (`make build`)")
    if os.environ.get(REQUIRE_ENV) == "1":
        raise RuntimeError(f"{REQUIRE_ENV}=1 but CUDA tensors reached the DGE ops and {reason}")
    if not _warned_cuda:
        warnings.warn(f"dge_explain: CUDA tensors run on the slow pure-PyTorch reference ops: {reason}.",
                      RuntimeWarning, stacklevel=3)
        _warned_cuda = True


# The op library the compiled path calls instead of torch.ops.dge_explain, and on CPU
# tensors: the CUDA kernels built as host code against the CUDA emulation, so that
# tests can run them without a GPU (tests/emulation.py sets it; nothing else does).
_emulated: str | None = None


def emulated() -> bool:
    """Whether CPU tensors run the CUDA kernels through the emulation now."""
    return _emulated is not None


def kernels():
    """The op namespace the compiled path calls."""
    return getattr(torch.ops, _emulated) if _emulated else torch.ops.dge_explain


def cuda_limits(device: torch.device) -> dict[str, int] | None:
    """The CUDA kernels' limits (from the build: head dim and heads of
    varlen_attention) where compiled ops on `device` run them; else None."""
    if device.type != "cuda" and _emulated is None:
        return None
    return _build_limits()


def _build_limits() -> dict[str, int] | None:
    if _EXTENSION is None:
        return None
    return {"head_dim": _EXTENSION.cuda_max_head_dim, "heads": _EXTENSION.cuda_max_heads}


def compiled_on(device: torch.device) -> bool:
    """Whether the ops run compiled kernels for tensors on this device."""
    if _emulated is not None:
        return device.type == "cpu"
    if active() != "compiled" or _EXTENSION is None:
        return False
    if device.type == "cuda" and not _EXTENSION.with_cuda:
        _reference_on_cuda()
        return False
    return device.type in ("cpu", "cuda")


def needs_grad(*tensors) -> bool:
    """Whether autograd must record an op (else its kernel is called directly)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
