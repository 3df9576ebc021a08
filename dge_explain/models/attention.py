"""Multi-head cross-attention from queries (sparse packed [L, C] with a patch
table, or dense [B, Lq, C]) to the keys and values of the full token set.

Two flavours, with the parameter names of the original implementation:
``ViTAttention`` (q, kv, optional qk-norm / scale-norm / output gate, as in timm)
and ``SpatialReductionAttention`` (PVT v1: keys and values from a strided conv
of the token grid, followed by LayerNorm)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dge_explain import ops
from dge_explain.ops import _backend


def token_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Grid tokens [B, H*W, C] as a [B, C, H, W] map, a view with channels-last strides
    wherever the tokens' strides allow (a copy otherwise): convolutions then take
    oneDNN's channels-last path, 3-11x faster at PVT's detection sizes than an NCHW
    copy followed by the conv."""
    return tokens.reshape(tokens.shape[0], *grid, tokens.shape[2]).permute(0, 3, 1, 2)


def _split_heads(q: torch.Tensor, heads: int, table: Optional[ops.PatchTable]) -> torch.Tensor:
    if table is not None:
        return q.view(q.shape[0], heads, -1)                                # [L, h, d]
    return q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)        # [B, h, Lq, d]


def _merge_heads(o: torch.Tensor, table: Optional[ops.PatchTable]) -> torch.Tensor:
    if table is not None:
        return o.reshape(o.shape[0], -1)
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def _keys_values(kv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, Nk, 2C] -> k, v [B, h, Nk, d] as strided views (no copy)."""
    batch, keys, _ = kv.shape
    kv = kv.view(batch, keys, 2, heads, -1)
    return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)


def _attend(q, k, v, table, dropout_p: float) -> torch.Tensor:
    if table is not None and table.batch == 1 and q.device.type == "cpu" and not _backend.emulated():
        # One sample: the packed rows are that sample's queries as they are, and
        # PyTorch's fused CPU kernel attends over them ~25 % faster than the varlen
        # kernel at a few hundred rows (DeiT-Ti at 224 px, batch 1, one thread).
        return F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k, v)[0].transpose(0, 1)
    if table is not None:
        return ops.varlen_attention(q, k, v, table)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def packed_products(rows: torch.Tensor, keys: torch.Tensor, table: Optional[ops.PatchTable]) -> torch.Tensor:
    """Each query-side row times its own sample's keys, per head: packed rows
    [L, h, d] with keys [B, h, Nk, d] -> [L, h, Nk]; dense rows [B, h, Lq, d] ->
    [B, h, Lq, Nk]."""
    if table is None:
        return rows @ keys.transpose(-2, -1)
    # packed rows go to a [B, longest, ...] padding and back through one index each way
    offsets = table.offsets.to(rows.device)
    sample = torch.repeat_interleave(torch.arange(len(table.lengths), device=rows.device),
                                     table.lengths.to(rows.device), output_size=rows.shape[0])
    where = (sample, torch.arange(rows.shape[0], device=rows.device) - offsets[sample])
    longest = int(table.lengths.max()) if rows.shape[0] else 0
    padded = rows.new_zeros(keys.shape[0], longest, *rows.shape[1:]).index_put(where, rows)
    return torch.einsum("blhd,bhnd->blhn", padded, keys)[where]


def attention_probabilities(q, k, table: Optional[ops.PatchTable]) -> torch.Tensor:
    """softmax(d^-1/2 Q K^T), materialised: [L, h, Nk] for packed q [L, h, d],
    [B, h, Lq, Nk] for dense q; what the fused and compiled kernels compute inside."""
    return packed_products(q * q.shape[-1] ** -0.5, k, table).softmax(-1)


class CrossAttention(nn.Module):
    """q from the queries, k and v from the block's full (normalised) input.

    ``capture``: set (by dge_explain.explainers) to a callable(q, k, v, output, table)
    that sees every attention call's inputs and per-head output (the fused or
    compiled kernels, which never materialise the probabilities, still compute
    it); None by default.  Only meaningful in eval mode (no attention dropout)."""

    capture = None

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def context(self, xn: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, h, Nk, d] of the full input."""
        return _keys_values(self.kv(xn), self.num_heads)

    def attend(self, q, k, v, table) -> torch.Tensor:
        """Per-head attention, heads merged back: [L, C] or [B, Lq, C]."""
        dropout = self.attn_drop.p if self.training else 0.0
        out = _attend(q, k, v, table, dropout)
        if self.capture is not None:
            self.capture(q, k, v, out, table)
        return _merge_heads(out, table)

    def forward(self, qn: torch.Tensor, xn: torch.Tensor, grid: tuple[int, int],
                table: Optional[ops.PatchTable]) -> torch.Tensor:
        """qn: normalised queries; xn: the normalised full input [B, N, C]."""
        q = _split_heads(self.q(qn), self.num_heads, table)
        k, v = self.context(xn, grid)
        return self.proj_drop(self.proj(self.attend(q, k, v, table)))


class ViTAttention(CrossAttention):
    """timm ViT attention with the fused qkv split into q and kv; keeps timm's
    optional qk-norm, scale-norm (``norm``) and output gate."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, q_norm: nn.Module | None = None,
                 k_norm: nn.Module | None = None, norm: nn.Module | None = None,
                 gate: nn.Linear | None = None):
        super().__init__(dim, num_heads, qkv_bias, proj_bias, attn_drop, proj_drop)
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.norm = norm if norm is not None else nn.Identity()
        self.gate = gate
        self._fused: tuple = ((), None, None)     # (key, weight, bias) of _qkv_weights

    def context(self, xn, grid):
        k, v = super().context(xn, grid)
        return self.k_norm(k), v

    def _qkv_weights(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """[q; kv] weight and bias, for one projection of every token where the
        queries are the full input (a DGE block whose regions are all finest): one
        [N, 3C] matmul instead of [N, C] and [N, 2C], which saves ~0.25 ms per
        DeiT-Ti block at 224 px on one thread.  Kept while the weights stay the same
        tensors and versions and take no gradient; concatenated afresh otherwise."""
        params = [p for p in (self.q.weight, self.kv.weight, self.q.bias, self.kv.bias) if p is not None]
        # inference tensors (a model built under torch.inference_mode) keep no version to key on
        if (torch.is_grad_enabled() and any(p.requires_grad for p in params)) or any(p.is_inference()
                                                                                     for p in params):
            return self._concatenated()
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._fused[0] != key:
            self._fused = (key, *(None if t is None else t.detach() for t in self._concatenated()))
        return self._fused[1], self._fused[2]

    def _concatenated(self):
        bias = None if self.q.bias is None else torch.cat([self.q.bias, self.kv.bias])
        return torch.cat([self.q.weight, self.kv.weight]), bias

    def forward(self, qn, xn, grid, table):
        if qn is xn and table is None:
            dim = self.q.out_features
            qkv = F.linear(xn, *self._qkv_weights())
            q = self.q_norm(_split_heads(qkv[..., :dim], self.num_heads, None))
            k, v = _keys_values(qkv[..., dim:], self.num_heads)
            k = self.k_norm(k)
        else:
            q = self.q_norm(_split_heads(self.q(qn), self.num_heads, table))
            k, v = self.context(xn, grid)
        o = self.norm(self.attend(q, k, v, table))
        if self.gate is not None:
            o = o * self.gate(qn).sigmoid()
        return self.proj_drop(self.proj(o))


class SpatialReductionAttention(CrossAttention):
    """PVT v1 attention: with sr_ratio r > 1 the keys and values come from
    LayerNorm(Conv_{r x r, stride r}(token grid)) (the grid excludes extra tokens,
    which PVT only has where r = 1)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias, True, attn_drop, proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def context(self, xn, grid):
        if self.sr_ratio > 1:
            height, width = grid
            if xn.shape[1] != height * width:
                raise ValueError(f"spatial reduction needs a pure {height}x{width} token grid, "
                                 f"got {xn.shape[1]} tokens")
            xn = self.norm(self.sr(token_map(xn, grid)).flatten(2).transpose(1, 2))
        return super().context(xn, grid)
