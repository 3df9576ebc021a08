"""Transformer blocks: the DGE block (queries chosen by a DynamicGrainedEncoder)
and the plain pre-norm block PVT uses when no DGE is asked for."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dge_explain import ops

from .encoder import DynamicGrainedEncoder


def _residual(x: torch.Tensor, branch: torch.Tensor, drop_path: nn.Module, per_query: bool):
    """x + DropPath(branch); per_query drops each packed query row on its own, as
    the original implementation does on its packed queries."""
    if isinstance(drop_path, nn.Identity):
        return x + branch
    if per_query:
        return x + drop_path(branch.reshape(-1, branch.shape[-1])).view_as(branch)
    return x + drop_path(branch)


class DGEBlock(nn.Module):
    """Pre-norm transformer block whose queries come from a DGE:
    q1 = q + DropPath(ls1(attn(LN1(q), LN1(x)))), q2 = q1 + DropPath(ls2(MLP(LN2(q1)))),
    y = x + up(q2 - q); keys and values always come from all tokens of x."""

    def __init__(self, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, mlp: nn.Module,
                 dge: DynamicGrainedEncoder, ls1: Optional[nn.Module] = None,
                 ls2: Optional[nn.Module] = None, drop_path1: Optional[nn.Module] = None,
                 drop_path2: Optional[nn.Module] = None, drop_path_per_query: bool = True):
        super().__init__()
        self.norm1 = norm1
        self.attn = attn
        self.ls1 = ls1 if ls1 is not None else nn.Identity()
        self.drop_path1 = drop_path1 if drop_path1 is not None else nn.Identity()
        self.norm2 = norm2
        self.mlp = mlp
        self.ls2 = ls2 if ls2 is not None else nn.Identity()
        self.drop_path2 = drop_path2 if drop_path2 is not None else nn.Identity()
        self.dge = dge
        self.drop_path_per_query = drop_path_per_query

    def encode(self, queries: torch.Tensor, x: torch.Tensor, grid: tuple[int, int],
               table: Optional[ops.PatchTable]) -> torch.Tensor:
        xn = self.norm1(x)
        qn = xn if queries is x else self.norm1(queries)  # the dense fast path: one LayerNorm
        branch = self.ls1(self.attn(qn, xn, grid, table))
        q = _residual(queries, branch, self.drop_path1, self.drop_path_per_query)
        branch = self.ls2(self.mlp(self.norm2(q)))
        return _residual(q, branch, self.drop_path2, self.drop_path_per_query)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # An attention capture (the attention explainers) reads each query's row through
        # its patch table, which a pooled pass has none of.
        pooled_path = getattr(self.attn, "capture", None) is None
        return self.dge(x, grid, lambda queries, tokens, table: self.encode(queries, tokens, grid, table),
                        pooled_path=pooled_path)


class DenseBlock(nn.Module):
    """The standard pre-norm block (every token a query), for dense PVT."""

    def __init__(self, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, mlp: nn.Module,
                 drop_path1: Optional[nn.Module] = None, drop_path2: Optional[nn.Module] = None):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.drop_path1 = drop_path1 if drop_path1 is not None else nn.Identity()
        self.drop_path2 = drop_path2 if drop_path2 is not None else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        xn = self.norm1(x)
        x = x + self.drop_path1(self.attn(xn, xn, grid, None))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
