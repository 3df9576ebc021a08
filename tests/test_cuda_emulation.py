"""The CUDA emulation's runtime (ext/emu): warp shuffles and barriers as meeting
points of coroutine threads, the launch limits of a GPU, deadlocks and misuse
reported, shared memory poisoned and guarded.  Each case is a small kernel in
tests/emu/runtime_cases.cpp, built with the host compiler (and once under
AddressSanitizer) and run as its own process."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "ext" / "emu" / "cuda_emu.cpp", ROOT / "tests" / "emu" / "runtime_cases.cpp"]
CASES = ["atomics_and_early_exit", "block_reduction", "deadlock", "divergent_warp_meeting", "dynamic_shared",
         "empty_grid", "grid_y_limit", "lane_outside_mask", "outside_a_kernel", "partial_warp", "poisoned_shared",
         "shared_limit", "shared_overrun", "shuffle_width", "threads_limit", "warp_sum"]


def test_the_rewrite_of_launches_and_dynamic_shared_memory():
    sys.path.insert(0, str(ROOT / "ext" / "emu"))
    from translate import translate

    source = ("  extern __shared__ __align__(16) unsigned char raw[];\n"
              "  scale_kernel<float><<<blocks(n, 4), n > 8 ? 256 : 32>>>(x, f(a, b));\n"
              "  k2<<<grid, warps * 32, bytes, stream>>>(args);\n")
    assert translate(source).splitlines() == [
        '#include "cuda_runtime_emu.h"',
        "  unsigned char* raw = static_cast<unsigned char*>(::emu::dynamic_shared());",
        '  ::emu::launch_kernel(scale_kernel<float>, "scale_kernel<float>", blocks(n, 4), n > 8 ? 256 : 32, 0)'
        "(x, f(a, b));",
        '  ::emu::launch_kernel(k2, "k2", grid, warps * 32, bytes, stream)(args);']


def _compiler() -> str:
    found = shutil.which(os.environ.get("CXX", "c++"))
    if found is None:
        pytest.skip("no C++ compiler (set CXX): the emulation's cases are C++")
    return found


def _build(directory: Path, name: str, *flags: str) -> Path:
    binary = directory / name
    result = subprocess.run([_compiler(), "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *flags,
                             *map(str, SOURCES), "-o", str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return binary


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("emu"), "runtime_cases")


def test_every_case_is_run(cases):
    listed = subprocess.run([str(cases), "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert listed == CASES


@pytest.mark.parametrize("case", CASES)
def test_the_emulation(cases, case):
    result = subprocess.run([str(cases), case], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_emulation_under_address_sanitizer(tmp_path):
    binary = _build(tmp_path, "runtime_cases_asan", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
    for case in CASES:
        result = subprocess.run([str(binary), case], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{case}: {result.stderr[-3000:]}"
        assert "ERROR: AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr, case


# Seeded bugs in ext/cuda (exact source text -> replacement): the emulated op
# self-check must fail on each, and pass on the unchanged sources.
MUTANTS = {
    "decompress with x and y swapped": {"patches": [(
        "const int64_t y = (n - num_extra) / grid_w, x = (n - num_extra) % grid_w;",
        "const int64_t x = (n - num_extra) / grid_w, y = (n - num_extra) % grid_w;")]},
    "attention's shared memory one vector short per warp": {"attention": [(
        "launch_shape(kernel, (dim * kTileStride + dim) * sizeof(acc_t))",
        "launch_shape(kernel, (dim * kTileStride) * sizeof(acc_t))")]},
    "attention warps' shared slices overlapping": {"attention": [(
        "reinterpret_cast<acc_t*>(shared_raw) + warp * (dim * kTileStride + dim);",
        "reinterpret_cast<acc_t*>(shared_raw) + warp * (dim * kTileStride + dim) / 2;")]},
    "attention launched with a partial warp": {"attention": [(
        "grid, warps * kWarp, bytes, stream)", "grid, warps * kWarp - 8, bytes, stream)")]},
}

SELF_CHECK = """
import sys, torch
torch.ops.load_library(sys.argv[1])
from dge_explain.ops import _backend
from dge_explain.ops.selfcheck import check_all
with _backend.emulating_cuda("dge_explain_emu"):
    try:
        failed = [r for dtype in (torch.float32, torch.float64) for r in check_all("cpu", dtype) if not r.passed]
    except RuntimeError as error:
        print("refused:", str(error).splitlines()[0]); sys.exit(3)
print("wrong:", sorted({f"{r.op} ({r.dtype})" for r in failed})); sys.exit(1 if failed else 0)
"""


def _self_check(library: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SELF_CHECK, str(library)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_the_emulated_self_check_catches_every_seeded_bug():
    from emulation import build

    control = _self_check(build(name="unchanged"))
    assert control.returncode == 0, control.stdout + control.stderr[-3000:]
    for index, (bug, mutations) in enumerate(MUTANTS.items()):
        result = _self_check(build(mutations, name=f"mutant{index}"))
        caught = (result.returncode == 1 and result.stdout.startswith("wrong: ")) or \
            (result.returncode == 3 and result.stdout.startswith("refused: "))
        assert caught, f"{bug}: not caught ({result.returncode})\n{result.stdout}{result.stderr[-3000:]}"
        print(f"{bug}: {result.stdout.strip()}")


def _address_sanitizer() -> str:
    found = subprocess.run([_compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(found):
        pytest.skip(f"{_compiler()} has no AddressSanitizer runtime (libasan.so)")
    return found


@pytest.mark.slow
def test_the_cuda_kernels_under_address_sanitizer():
    """The op self-check in all four dtypes through the emulation built with ASan
    (the Python process preloads its runtime): no report; a seeded off-by-one in
    the attention's row bound is reported as a heap overflow."""
    from emulation import build

    runtime = _address_sanitizer()
    flags = ("-fsanitize=address", "-fno-omit-frame-pointer")
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0", "OMP_NUM_THREADS": "1"}
    script = SELF_CHECK.replace("(torch.float32, torch.float64)",
                                "(torch.float32, torch.float16, torch.bfloat16, torch.float64)")
    clean = subprocess.run([sys.executable, "-c", script, str(build(name="asan", flags=flags))],
                           capture_output=True, text=True, timeout=600, env=env)
    assert clean.returncode == 0 and "ERROR: AddressSanitizer" not in clean.stderr, \
        clean.stdout + clean.stderr[-3000:]
    off_by_one = {"attention": [("if (row >= a.total) return;  // whole warps leave together",
                                 "if (row > a.total) return;")]}
    seeded = subprocess.run([sys.executable, "-c", script, str(build(off_by_one, name="asan-mutant", flags=flags))],
                            capture_output=True, text=True, timeout=600, env=env)
    assert seeded.returncode != 0 and "ERROR: AddressSanitizer: heap-buffer-overflow" in seeded.stderr, \
        seeded.stdout + seeded.stderr[-3000:]
