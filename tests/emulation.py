"""The CUDA emulation's build for the tests: ext/cuda's sources, rewritten by
ext/emu/translate.py, compiled as host C++ against ext/emu (coroutine threads,
meeting points, launch and shared-memory checks) and registered for CPU tensors
as torch.ops.dge_explain_emu.  Built once into build/emu (ninja rebuilds what
changed); `emulated_cuda()` then runs the ops' CUDA kernels on CPU tensors."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "dge_explain_emu"


def build(directory: Path | None = None, flags=()) -> Path:
    """Translate and compile; returns the shared library (loaded)."""
    from torch.utils.cpp_extension import load

    directory = directory or ROOT / "build" / "emu"
    directory.mkdir(parents=True, exist_ok=True)
    sources = directory / "src"
    subprocess.run([sys.executable, str(ROOT / "ext" / "emu" / "translate.py"), str(sources)], check=True)
    load(name="dge_emu", build_directory=str(directory), is_python_module=False, verbose=False,
         sources=[str(sources / "cuda" / "attention.cpp"), str(sources / "cuda" / "patches.cpp"),
                  str(ROOT / "ext" / "checks.cpp"), str(ROOT / "ext" / "emu" / "cuda_emu.cpp"),
                  str(ROOT / "ext" / "emu" / "bindings.cpp")],
         extra_include_paths=[str(ROOT / "ext" / "emu" / "shim"), str(ROOT / "ext" / "emu"), str(ROOT / "ext"),
                              str(sources)],
         extra_cflags=["-O1", "-DDGE_WITH_CUDA", "-Wno-unknown-pragmas", *flags])
    return directory / "dge_emu.so"


@contextlib.contextmanager
def emulated_cuda():
    from dge_explain.ops import _backend

    if not hasattr(torch.ops, LIBRARY) or not hasattr(getattr(torch.ops, LIBRARY), "compress"):
        build()
    with _backend.emulating_cuda(LIBRARY):
        yield
