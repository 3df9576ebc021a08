"""Varlen cross-attention from packed sparse queries to each sample's dense keys."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _backend, fused_attention, reference
from .checks import check_float, check_same, check_tensor, require, sample_offsets
from .patch_table import PatchTable


class _VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, offsets, scale):
        need_grad = any(ctx.needs_input_grad[:3])
        out, lse = _backend.kernels().varlen_attention_forward(q, k, v, offsets, scale, need_grad)
        if need_grad:
            ctx.save_for_backward(q, k, v, out, lse, offsets)
            ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, out, lse, offsets = ctx.saved_tensors
        grad_q, grad_k, grad_v = _backend.kernels().varlen_attention_backward(
            grad, q, k, v, out, lse, offsets, ctx.scale)
        return grad_q, grad_k, grad_v, None, None


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     offsets: torch.Tensor | PatchTable, scale: float | None = None) -> torch.Tensor:
    """Per-sample softmax(scale * Q_b K_b^T) V_b.

    q: packed queries [L, h, d]; k, v: [B, h, Nk, d] (any strides with a unit last
    stride, e.g. permuted views of a fused kv projection); offsets: [B+1] row
    offsets of the samples in q, or the PatchTable that packed them.
    Returns [L, h, d]; scale defaults to d^-0.5.  On CUDA, PyTorch's fused
    kernels serve where they can (ops/fused_attention.py); the project's own
    kernel elsewhere.
    """
    check_tensor("q", q, 3, "[L, h, d]")
    check_tensor("k", k, 4, "[B, h, Nk, d]")
    check_tensor("v", v, 4, "[B, h, Nk, d]")
    check_float("q", q)
    check_same("k", k, "q", q)
    check_same("v", v, "q", q)
    require(k.shape == v.shape, lambda: f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in shape")
    require(k.shape[1] == q.shape[1] and k.shape[3] == q.shape[2],
            lambda: f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on heads or head dim")
    require(k.shape[2] > 0, lambda: f"k {tuple(k.shape)} has no keys")
    require(q.shape[2] > 0, lambda: f"q {tuple(q.shape)} has an empty head dim")
    offsets, lengths = sample_offsets(offsets, k.shape[0], q.shape[0], q.device,
                                      f"q {tuple(q.shape)} and k {tuple(k.shape)}")
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    fused = fused_attention.kernel_for(q)
    if fused is not None:
        return fused_attention.attend(fused, q, k, v, offsets, max(map(int, lengths)), scale)
    if not _backend.compiled_on(q.device):
        return reference.varlen_attention(q, k, v, offsets, scale)
    limits = _backend.cuda_limits(q.device)
    if limits is not None:
        require(q.shape[2] <= limits["head_dim"] and q.shape[1] <= limits["heads"],
                lambda: f"varlen_attention on CUDA supports head dim <= {limits['head_dim']} and at most "
                        f"{limits['heads']} heads, got q {tuple(q.shape)}")
    if _backend.needs_grad(q, k, v):
        return _VarlenAttention.apply(q, k, v, offsets, scale)
    return _backend.kernels().varlen_attention_forward(q, k, v, offsets, scale, False)[0]
