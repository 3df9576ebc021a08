"""compress / decompress / restore: move tokens between the dense [B, N, C]
layout and the packed [L, C] queries of a PatchTable.

The compiled path wraps the extension in autograd Functions with exact,
hand-derived backwards (compress^T = decompress / area, decompress^T = block sum);
the reference path differentiates the oracle with autograd.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _backend
from . import reference as oracle
from .checks import check_float, check_same, check_tensor, require
from .patch_table import PatchTable


def _block_pool(x: torch.Tensor, table: PatchTable, average: bool) -> torch.Tensor:
    height, width = table.grid
    return _backend.kernels().compress(x, table.rows, table.region_start, table.region_k,
                                          table.offsets, height, width, table.region_size,
                                          table.num_extra, average)


def _scatter(src, subtract, reference, table: PatchTable, divide_by_area: bool) -> torch.Tensor:
    height, width = table.grid
    return _backend.kernels().decompress(
        src, subtract, reference, table.region_start, table.region_k, table.offsets, height,
        width, table.region_size, table.num_extra, divide_by_area)


class _Compress(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table):
        ctx.table = table
        return _block_pool(x, table, average=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _scatter(grad, None, None, ctx.table, divide_by_area=True), None


class _Decompress(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, reference, table):
        ctx.table = table
        ctx.with_reference = reference is not None
        return _scatter(delta, None, reference, table, divide_by_area=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad_delta = _block_pool(grad, ctx.table, average=False)
        return grad_delta, (grad if ctx.with_reference else None), None


class _Restore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q2, comp, table):
        ctx.table = table
        return _scatter(q2, comp, x, table, divide_by_area=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        block_sum = _block_pool(grad, ctx.table, average=False)
        return grad, block_sum, -block_sum, None


def _check_dense(name: str, x: torch.Tensor, table: PatchTable) -> None:
    check_tensor(name, x, 3, "[B, N, C]")
    check_float(name, x)
    require(x.device == table.device, lambda: f"{name} is on {x.device} but the patch table is on "
                                              f"{table.device}")
    require(x.shape[0] == table.batch and x.shape[1] == table.tokens,
            lambda: f"{name} has shape {tuple(x.shape)} but the patch table expects [B={table.batch}, "
                    f"N={table.tokens} (= {table.num_extra} extra + {table.grid[0]}x{table.grid[1]} grid), C]")


def _check_packed(name: str, q: torch.Tensor, table: PatchTable) -> None:
    check_tensor(name, q, 2, "[L, C]")
    check_float(name, q)
    require(q.device == table.device, lambda: f"{name} is on {q.device} but the patch table is on "
                                              f"{table.device}")
    require(q.shape[0] == table.total,
            lambda: f"{name} has shape {tuple(q.shape)} but the patch table has L={table.total} rows")


def compress(x: torch.Tensor, table: PatchTable) -> torch.Tensor:
    """Packed queries [L, C]: the mean of each patch's tokens; extra tokens copied."""
    _check_dense("x", x, table)
    if not _backend.compiled_on(table.device):
        return oracle.compress(x, table)
    return _Compress.apply(x, table) if _backend.needs_grad(x) else _block_pool(x, table, average=True)


def decompress(delta: torch.Tensor, table: PatchTable, reference: torch.Tensor | None = None,
               add_reference: bool = True) -> torch.Tensor:
    """[B, N, C]: each token takes the packed row covering it (+ reference when given
    and add_reference).  Every output element is written."""
    _check_packed("delta", delta, table)
    if reference is not None:
        _check_dense("reference", reference, table)
        check_same("reference", reference, "delta", delta)
        require(reference.shape[2] == delta.shape[1],
                lambda: f"reference has {reference.shape[2]} channels but delta has {delta.shape[1]}")
        if not add_reference:
            reference = None
    if not _backend.compiled_on(table.device):
        return oracle.decompress(delta, table, reference)
    if _backend.needs_grad(delta, reference):
        return _Decompress.apply(delta, reference, table)
    return _scatter(delta, None, reference, table, divide_by_area=False)


def restore(x: torch.Tensor, q2: torch.Tensor, comp: torch.Tensor, table: PatchTable) -> torch.Tensor:
    """The fused DGE restore x + up(q2 - comp): details of x are kept, only the
    encoder's update is shared across a patch."""
    _check_dense("x", x, table)
    _check_packed("q2", q2, table)
    _check_packed("comp", comp, table)
    check_same("q2", q2, "x", x)
    check_same("comp", comp, "x", x)
    require(q2.shape[1] == x.shape[2] and comp.shape[1] == x.shape[2],
            lambda: f"channel mismatch: x {tuple(x.shape)}, q2 {tuple(q2.shape)}, comp {tuple(comp.shape)}")
    if not _backend.compiled_on(table.device):
        return oracle.restore(x, q2, comp, table)
    if _backend.needs_grad(x, q2, comp):
        return _Restore.apply(x, q2, comp, table)
    return _scatter(q2, comp, x, table, divide_by_area=False)
