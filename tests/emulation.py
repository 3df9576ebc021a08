"""The CUDA emulation's build for the tests: ext/cuda's sources, rewritten by
ext/emu/translate.py, compiled as host C++ against ext/emu (coroutine threads,
meeting points, launch and shared-memory checks) and registered for CPU tensors
as torch.ops.dge_explain_emu.  Objects are cached in build/emu by the hash of
their source, the headers and the flags, so a seeded-bug build (`mutations`)
recompiles only the file it changes; `emulated_cuda()` runs the ops' CUDA
kernels on CPU tensors."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "ext"
LIBRARY = "dge_explain_emu"
COMPILER = os.environ.get("CXX", "c++")
TRANSLATED = ("attention", "deformable", "patches")
sys.path.insert(0, str(EXT / "emu"))
from translate import translate  # noqa: E402


def _flags(extra) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    includes = [EXT / "emu" / "shim", EXT / "emu", EXT]
    return ["-fPIC", "-std=c++20", "-O1", "-DDGE_WITH_CUDA", "-DTORCH_API_INCLUDE_EXTENSION_H",
            "-Wno-unknown-pragmas", *[f"-I{p}" for p in includes],
            *[f"-isystem{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]], *extra]


def _headers() -> bytes:
    return b"".join(p.read_bytes() for p in sorted(EXT.rglob("*")) if p.suffix in (".h", ".cuh"))


def _compile(source: Path, text: str, directory: Path, flags: list[str], headers: bytes) -> Path:
    key = hashlib.sha1(text.encode() + headers + " ".join(flags).encode()).hexdigest()[:16]
    obj = directory / f"{source.stem}-{key}.o"
    if not obj.exists():
        written = directory / f"{source.stem}-{key}.cpp"
        written.write_text(text)
        partial = obj.with_suffix(f".{os.getpid()}.partial")   # another test process may build it too
        result = subprocess.run([COMPILER, *flags, f"-I{source.parent}", "-c", str(written), "-o", str(partial)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {source.name} for the CUDA emulation failed:\n{result.stderr[-4000:]}")
        os.replace(partial, obj)
    return obj


def build(mutations: dict[str, list[tuple[str, str]]] | None = None, name: str = "dge_emu",
          flags=(), directory: Path | None = None) -> Path:
    """The emulated ops' shared library (not loaded).  `mutations`: per CUDA source
    ("attention", "patches"), (exact text, replacement) pairs applied before the build."""
    from torch.utils.cpp_extension import library_paths

    directory = directory or ROOT / "build" / "emu"
    directory.mkdir(parents=True, exist_ok=True)
    compile_flags, headers = _flags(flags), _headers()
    units = []
    for stem in TRANSLATED:
        text = translate((EXT / "cuda" / f"{stem}.cu").read_text())
        for old, new in (mutations or {}).get(stem, []):
            if old not in text:
                raise ValueError(f"mutation target not found in ext/cuda/{stem}.cu: {old!r}")
            text = text.replace(old, new)
        units.append((EXT / "cuda" / f"{stem}.cu", text))
    units += [(path, path.read_text()) for path in (EXT / "checks.cpp", EXT / "emu" / "cuda_emu.cpp",
                                                    EXT / "emu" / "bindings.cpp")]
    with ThreadPoolExecutor(2) as pool:
        objects = list(pool.map(lambda unit: _compile(*unit, directory, compile_flags, headers), units))
    library = directory / f"{name}.so"
    partial = directory / f"{name}.{os.getpid()}.partial.so"
    link = [COMPILER, "-shared", *map(str, objects), *flags, *[f"-L{p}" for p in library_paths()],
            "-lc10", "-ltorch_cpu", "-ltorch", "-o", str(partial)]
    result = subprocess.run(link, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"linking the CUDA emulation failed:\n{result.stderr[-4000:]}")
    os.replace(partial, library)
    return library


@contextlib.contextmanager
def emulating_cuda(library: str):
    """Inside, the ops hand CPU tensors to torch.ops.<library> (the CUDA kernels
    built against the emulation, already loaded) and accept CUDA's dtypes on the CPU."""
    from dge_explain.ops import _backend

    if not hasattr(torch.ops, library) or not hasattr(getattr(torch.ops, library), "compress"):
        raise RuntimeError(f"torch.ops.{library} is not loaded: build the CUDA emulation first")
    previous, _backend._emulated = _backend._emulated, library
    try:
        yield
    finally:
        _backend._emulated = previous


@contextlib.contextmanager
def emulated_cuda():
    if not hasattr(getattr(torch.ops, LIBRARY), "compress"):
        torch.ops.load_library(str(build()))
    with emulating_cuda(LIBRARY):
        yield
