"""Validation of user input to the ops: every failure is a ValueError that names
the argument at fault and the shapes involved."""
from __future__ import annotations

from typing import Callable

import torch

from . import _backend
from .patch_table import PatchTable

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def require(condition: bool, message: str | Callable[[], str]) -> None:
    """Raise ValueError(message) unless condition.  The ops run these checks on
    every call, so a message that formats shapes is passed as a callable and
    only built on failure (eager f-strings cost ~6 us per op call)."""
    if not condition:
        raise ValueError(message() if callable(message) else message)


def check_tensor(name: str, tensor, ndim: int, layout: str) -> None:
    """`tensor` must be a torch.Tensor with `ndim` dims; `layout` names them."""
    require(isinstance(tensor, torch.Tensor),
            lambda: f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    require(tensor.dim() == ndim,
            lambda: f"{name} must be {layout} ({ndim}-D), got shape {tuple(tensor.shape)}")


def check_float(name: str, tensor: torch.Tensor) -> None:
    allowed = CUDA_DTYPES if tensor.device.type == "cuda" or _backend.emulated() else CPU_DTYPES
    require(tensor.dtype in allowed,
            lambda: f"{name} has dtype {tensor.dtype}; on {tensor.device.type} the ops support "
                    f"{', '.join(str(d).replace('torch.', '') for d in allowed)}")


def check_same(name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """Same device and dtype as `other`."""
    require(tensor.device == other.device,
            lambda: f"{name} is on {tensor.device} but {other_name} is on {other.device}")
    require(tensor.dtype == other.dtype,
            lambda: f"{name} has dtype {tensor.dtype} but {other_name} has {other.dtype}")


def sample_offsets(offsets, batch: int, rows: int, device, names: str):
    """The row offsets [B+1] (int64 on `device`) and per-sample row counts of packed
    rows, from a PatchTable or a rising [B+1] tensor that must span 0..rows;
    `names` says which arguments give batch and rows (for the error)."""
    if isinstance(offsets, PatchTable):
        require(offsets.batch == batch and offsets.total == rows,
                lambda: f"patch table (B={offsets.batch}, L={offsets.total}) does not match {names}")
        return offsets.offsets, offsets.lengths
    check_tensor("offsets", offsets, 1, "[B+1]")
    require(offsets.shape[0] == batch + 1,
            lambda: f"offsets has shape {tuple(offsets.shape)} but {names} give batch {batch}: expected [{batch + 1}]")
    bounds = offsets.tolist()
    require(bounds[0] == 0 and bounds[-1] == rows and all(a <= b for a, b in zip(bounds, bounds[1:])),
            lambda: f"offsets must rise from 0 to L={rows}, got {bounds}")
    return offsets.to(device=device, dtype=torch.long), [b - a for a, b in zip(bounds, bounds[1:])]


def region_grid(grid: tuple[int, int], region_size: int, ragged: bool = False) -> tuple[int, int]:
    """(Hr, Wr) of a token grid tiled by square regions.  A grid that is not a
    multiple of the region size is refused, unless `ragged`: then the last row and
    column of regions are cut short by the grid's border (Hr = ceil(H / S))."""
    height, width = (int(v) for v in grid)
    require(region_size >= 1, lambda: f"region_size must be >= 1, got {region_size}")
    require(height > 0 and width > 0, lambda: f"token grid {height}x{width} is empty")
    require(ragged or (height % region_size == 0 and width % region_size == 0),
            lambda: f"token grid {height}x{width} is not divisible by region size {region_size}; "
                    f"use an input whose token grid is a multiple of {region_size} "
                    f"(e.g. {_round_up(height, region_size)}x{_round_up(width, region_size)})")
    return -(-height // region_size), -(-width // region_size)


def check_split_sizes(split_sizes, region_size: int | None) -> tuple[tuple[int, ...], int]:
    """Normalise split sizes (sub-patches per region side, finest first) and S."""
    splits = tuple(int(k) for k in split_sizes)
    require(len(splits) > 0, "split_sizes must not be empty")
    require(all(k >= 1 for k in splits), lambda: f"split_sizes must be positive, got {splits}")
    size = max(splits) if region_size is None else int(region_size)
    require(all(size % k == 0 for k in splits),
            lambda: f"every split size must divide region_size {size}, got split_sizes {splits}")
    require(len(set(splits)) == len(splits), lambda: f"split_sizes has duplicates: {splits}")
    return splits, size


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
