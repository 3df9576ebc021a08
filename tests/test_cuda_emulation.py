"""The CUDA emulation's runtime (ext/emu): warp shuffles and barriers as meeting
points of coroutine threads, the launch limits of a GPU, deadlocks and misuse
reported, shared memory poisoned and guarded.  Each case is a small kernel in
tests/emu/runtime_cases.cpp, built with the host compiler (and once under
AddressSanitizer) and run as its own process."""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
        "const index_t y = (n - num_extra) / grid_w, x = (n - num_extra) % grid_w;",
        "const index_t x = (n - num_extra) / grid_w, y = (n - num_extra) % grid_w;")]},
    "routing scan without the barrier between reading and adding the partial sums": {"patches": [(
        "const int64_t left = lane >= step ? partial[lane - step] : 0;\n      __syncthreads();",
        "const int64_t left = lane >= step ? partial[lane - step] : 0;")]},
    "compress's packed path averaging by the side instead of the area": {"patches": [(
        "const acc_t scale = average ? acc_t(1) / static_cast<acc_t>(patch_h * patch_w) : acc_t(1);",
        "const acc_t scale = average ? acc_t(1) / static_cast<acc_t>(N > 1 ? patch_w : patch_h * patch_w) : acc_t(1);")]},
    "decompress ignoring a ragged border (whole regions' sub-patches per line)": {"patches": [(
        "const index_t k_x = static_cast<index_t>(sub_patches(x_base, region_size, grid_w, step));",
        "const index_t k_x = region_size / step;")]},
    "attention's shared memory one vector short per warp": {"attention": [(
        "launch_shape(kernel, (dim * kTileStride + dim) * sizeof(acc_t))",
        "launch_shape(kernel, (dim * kTileStride) * sizeof(acc_t))")]},
    "attention warps' shared slices overlapping": {"attention": [(
        "reinterpret_cast<acc_t*>(shared_raw) + warp * (dim * kTileStride + dim);",
        "reinterpret_cast<acc_t*>(shared_raw) + warp * (dim * kTileStride + dim) / 2;")]},
    "deformable attention's rows assigned to the previous sample at its first row": {"deformable": [(
        "if (offsets[middle] <= row) low = middle;", "if (offsets[middle] < row) low = middle;")]},
    "deformable attention's value gradient missing the point weight": {"deformable": [(
        "atomicAdd(grad_value + at + ch, weight * c.weight[corner] * g_ch);",
        "atomicAdd(grad_value + at + ch, c.weight[corner] * g_ch);")]},
    "attention launched with a partial warp": {"attention": [(
        "grid, warps * kWarp, bytes, stream)", "grid, warps * kWarp - 8, bytes, stream)")]},
}

SELF_CHECK = f"""
import sys, torch
torch.ops.load_library(sys.argv[1])
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from emulation import emulating_cuda
from dge_explain.ops.selfcheck import check_all
with emulating_cuda("dge_explain_emu"):
    try:
        failed = [r for dtype in (torch.float32, torch.float64) for r in check_all("cpu", dtype) if not r.passed]
    except RuntimeError as error:
        print("refused:", str(error).splitlines()[0]); sys.exit(3)
print("wrong:", sorted({{f"{{r.op}} ({{r.dtype}})" for r in failed}})); sys.exit(1 if failed else 0)
"""


def _self_check(library: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SELF_CHECK, str(library)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_the_emulated_self_check_catches_every_seeded_bug():
    from emulation import build

    control = _self_check(build(name="unchanged"))
    assert control.returncode == 0, control.stdout + control.stderr[-3000:]
    with ThreadPoolExecutor(2) as pool:  # builds and self-checks are subprocesses: two at a time
        results = list(pool.map(lambda item: _self_check(build(item[1], name=f"mutant{item[0]}")),
                                enumerate(MUTANTS.values())))
    for (bug, _), result in zip(MUTANTS.items(), results):
        # wrong results, a refused launch, or the process killed by a signal (an
        # index run out of its tensor: SIGSEGV, or SIGFPE from a split size read there)
        caught = (result.returncode == 1 and result.stdout.startswith("wrong: ")) or \
            (result.returncode == 3 and result.stdout.startswith("refused: ")) or result.returncode < 0
        assert caught, f"{bug}: not caught ({result.returncode})\n{result.stdout}{result.stderr[-3000:]}"
        print(f"{bug}: {result.stdout.strip() or f'killed by signal {-result.returncode}'}")


def _address_sanitizer() -> str:
    found = subprocess.run([_compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(found):
        pytest.skip(f"{_compiler()} has no AddressSanitizer runtime (libasan.so)")
    return found


# Pooling on inputs one element past a 16-byte boundary: the kernels' packed
# accesses would be misaligned there, which the alignment sanitizer reports
# (run before the self-check, so that its mutant stops early).
MISALIGNED = """
from dge_explain import ops
from dge_explain.ops.selfcheck import random_case
with emulating_cuda("dge_explain_emu"):
    case = random_case(2, (2, 2), (2, 1), 1, 16, torch.float32, "cpu", torch.Generator().manual_seed(0))
    x = torch.empty(case.x.numel() + 1)[1:].view(case.x.shape).copy_(case.x)
    comp = ops.compress(x, case.table)
    ops.restore(x, comp * 2, comp, case.table)
"""


@pytest.mark.slow
def test_the_cuda_kernels_under_address_sanitizer():
    """The op self-check in all four dtypes and pooling on misaligned inputs, through
    the emulation built with ASan and the alignment sanitizer (the Python process
    preloads ASan's runtime): no report.  Seeded bugs are reported: an off-by-one in
    the attention's row bound as a heap overflow, packs used without the pointer
    alignment check as a misaligned load."""
    from emulation import build

    runtime = _address_sanitizer()
    flags = ("-fsanitize=address,alignment", "-fno-sanitize-recover=alignment", "-fno-omit-frame-pointer")
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0", "OMP_NUM_THREADS": "1"}
    script = SELF_CHECK.replace("(torch.float32, torch.float64)",
                                "(torch.float32, torch.float16, torch.bfloat16, torch.float64)")
    script = script.replace('with emulating_cuda("dge_explain_emu"):\n    try:',
                            MISALIGNED + 'with emulating_cuda("dge_explain_emu"):\n    try:', 1)

    def run(library):
        return subprocess.run([sys.executable, "-c", script, str(library)], capture_output=True, text=True,
                              timeout=600, env=env)

    clean = run(build(name="asan", flags=flags))
    assert clean.returncode == 0 and "ERROR: AddressSanitizer" not in clean.stderr \
        and "runtime error" not in clean.stderr, clean.stdout + clean.stderr[-3000:]
    off_by_one = {"attention": [("if (row >= a.total) return;  // whole warps leave together",
                                 "if (row > a.total) return;")]}
    unchecked = {"patches": [("packed = packed && reinterpret_cast<uintptr_t>(pointer) % kPackBytes == 0;",
                              "packed = packed;")]}
    with ThreadPoolExecutor(2) as pool:
        overflow, misaligned = pool.map(lambda item: run(build(item[1], name=item[0], flags=flags)),
                                        [("asan-mutant", off_by_one), ("asan-misaligned", unchecked)])
    assert overflow.returncode != 0 and "ERROR: AddressSanitizer: heap-buffer-overflow" in overflow.stderr, \
        overflow.stdout + overflow.stderr[-3000:]
    assert misaligned.returncode != 0 and "misaligned address" in misaligned.stderr, \
        misaligned.stdout + misaligned.stderr[-3000:]
