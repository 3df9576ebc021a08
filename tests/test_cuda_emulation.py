"""The CUDA emulation's runtime (ext/emu): warp shuffles and barriers as meeting
points of coroutine threads, the launch limits of a GPU, deadlocks and misuse
reported, shared memory poisoned and guarded.  Each case is a small kernel in
tests/emu/runtime_cases.cpp, built with the host compiler (and once under
AddressSanitizer) and run as its own process."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "ext" / "emu" / "cuda_emu.cpp", ROOT / "tests" / "emu" / "runtime_cases.cpp"]
CASES = ["atomics_and_early_exit", "block_reduction", "deadlock", "divergent_warp_meeting", "dynamic_shared",
         "empty_grid", "grid_y_limit", "lane_outside_mask", "outside_a_kernel", "partial_warp", "poisoned_shared",
         "shared_limit", "shared_overrun", "shuffle_width", "threads_limit", "warp_sum"]


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
