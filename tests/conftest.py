"""Shared fixtures: a fresh random seed per session (printed, and fixed with
DGE_TEST_SEED=N to replay a failure), the data home, and NaN-poisoned outputs."""
from __future__ import annotations

import contextlib
import os
import random
import zlib

import pytest
import torch

SEED = int(os.environ.get("DGE_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"dge-explain random seed: {SEED} (replay with DGE_TEST_SEED={SEED})"


def _test_seed(request) -> int:
    return SEED ^ (zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF)


@pytest.fixture(autouse=True)
def _seed_global_rng(request):
    """torch's global RNG (model initialisation, e.g. timm.create_model) seeded per test
    as well, so that DGE_TEST_SEED replays a test alone exactly as in the full run."""
    torch.manual_seed(_test_seed(request))


@pytest.fixture
def generator(request) -> torch.Generator:
    """A generator seeded from the session seed and the test's name."""
    return torch.Generator().manual_seed(_test_seed(request))


@contextlib.contextmanager
def poisoned_outputs():
    """Every torch.empty / at::empty inside (the kernels' outputs included) comes
    back filled with NaN (integers: their max), so an element a kernel fails to
    write shows up in the result."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def shared_home():
    """The shared data folder, or skip naming what is missing."""
    value = os.environ.get("DGE_EXPLAIN_HOME")
    if not value:
        pytest.skip("DGE_EXPLAIN_HOME is not set: the test needs the shared data (../shared)")
    if not os.path.isdir(value):
        pytest.skip(f"DGE_EXPLAIN_HOME={value} is not a directory")
    return value


def shared_file(relative: str) -> str:
    path = os.path.join(shared_home(), relative)
    if not os.path.exists(path):
        pytest.skip(f"shared file missing: {path}")
    return path


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible (the CUDA kernels run through the CUDA emulation instead)")
