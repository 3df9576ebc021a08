"""The DGE attention on PyTorch's fused CUDA attention kernels.

Packed queries with per-sample offsets are already the variable-length layout of
FlashAttention and of the memory-efficient (CUTLASS) kernel: queries [L, h, d]
with cu_seq_q = the patch table's offsets; each sample's dense keys become
``Nk`` rows of one [B*Nk, h, d] tensor with cu_seq_k = (0, Nk, 2Nk, ...).  For the
models' fused kv projection ([B, Nk, 2, h, d]) that tensor is a strided view,
never a copy.

Which kernel serves (``fused_kernel``):
- ``flash``: float16 / bfloat16, head dim a multiple of 8 and <= 256 (<= 192 on
  sm86-89 and sm120+), sm80 or newer: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention 2, or cuDNN
  where torch prefers it: Hopper/Blackwell, more than 128 queries in a sample).
- ``efficient``: float32 (and float16 / bfloat16 that flash refuses; bfloat16 on
  sm80+ only), head dim a multiple of the kernel's 16-byte alignment: ``aten::_efficient_attention_forward``
  / ``_backward`` with the same offsets.
- none: float64, and every case both refuse; the project's own CUDA kernel runs.

The constraints are those of the installed torch's ``sdp_utils`` and kernel
entry points (see the README's kernel table); ``tests/test_ops_fused.py`` runs
this wiring on the CPU against stand-ins that enforce that contract.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.autograd.function import once_differentiable

FLASH_DTYPES = (torch.float16, torch.bfloat16)
EFFICIENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256
ALIGNMENT_BYTES = 16
KERNELS = ("flash", "efficient")

_enabled = True


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Inside, CUDA attention uses PyTorch's fused kernels (True, the default) or
    always the project's own kernel (False: tests and benchmarks of that kernel)."""
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


def fused_kernel(dtype: torch.dtype, head_dim: int, capability: tuple[int, int]) -> str | None:
    """The fused kernel that serves this dtype and head dim on a GPU of this
    compute capability, or None where the project's own kernel runs."""
    if dtype in FLASH_DTYPES and head_dim % 8 == 0 and head_dim <= _flash_max_head_dim(capability) \
            and capability >= (8, 0):
        return "flash"
    if dtype in EFFICIENT_DTYPES and head_dim % (ALIGNMENT_BYTES // dtype.itemsize) == 0 \
            and capability >= ((8, 0) if dtype == torch.bfloat16 else (5, 0)):
        return "efficient"
    return None


def _flash_max_head_dim(capability: tuple[int, int]) -> int:
    """FlashAttention's backward refuses head dims above 192 on sm86-89 and sm120-121
    (too little shared memory); those go to the memory-efficient kernel instead."""
    return 192 if (8, 6) <= capability < (9, 0) or capability >= (12, 0) else FLASH_MAX_HEAD_DIM


def kernel_for(q: torch.Tensor) -> str | None:
    """The fused kernel for these CUDA queries; None off CUDA, when disabled, and
    for L = 0 (no rows to launch over: the own kernel returns the empty result)."""
    if not _enabled or q.device.type != "cuda" or q.shape[0] == 0:
        return None
    return fused_kernel(q.dtype, q.shape[-1], torch.cuda.get_device_capability(q.device))


@dataclass(frozen=True)
class VarlenLayout:
    query: torch.Tensor      # [L, h, d]
    key: torch.Tensor        # [B*Nk, h, d], a view of k where its strides allow
    value: torch.Tensor      # [B*Nk, h, d]
    cu_seq_q: torch.Tensor   # [B+1] int32: the offsets
    cu_seq_k: torch.Tensor   # [B+1] int32: 0, Nk, 2 Nk, ...
    max_q: int
    max_k: int


def varlen_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
                  max_q: int) -> VarlenLayout:
    """The fused kernels' layout of a DGE attention call: q [L, h, d]; k, v
    [B, h, Nk, d]; offsets [B+1] on q's device; max_q the most queries of a sample."""
    batch, heads, keys, dim = k.shape
    rows = lambda t: t.transpose(1, 2).reshape(batch * keys, heads, dim)    # noqa: E731
    cu_seq_q = offsets.to(device=q.device, dtype=torch.int32).contiguous()
    cu_seq_k = torch.arange(0, (batch + 1) * keys, keys, device=q.device, dtype=torch.int32)
    return VarlenLayout(q, rows(k), rows(v), cu_seq_q, cu_seq_k, max_q, keys)


def attend(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
           max_q: int, scale: float) -> torch.Tensor:
    """[L, h, d] through the named fused kernel (L > 0); differentiable in q, k, v."""
    if kernel not in KERNELS:
        raise ValueError(f"fused kernel must be one of {KERNELS}, got {kernel!r}")
    if q.shape[0] == 0:
        raise ValueError(f"the fused kernels need at least one query row, got q {tuple(q.shape)}")
    layout = varlen_layout(q, k, v, offsets, max_q)
    if kernel == "flash":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(layout.query, layout.key, layout.value, layout.cu_seq_q, layout.cu_seq_k,
                           layout.max_q, layout.max_k, scale=scale)
    return _EfficientVarlen.apply(layout.query, layout.key, layout.value, layout, scale)


class _EfficientVarlen(torch.autograd.Function):
    """The memory-efficient kernel in its variable-length form: batch 1, the
    samples told apart by cu_seqlens (no dropout, no mask)."""

    @staticmethod
    def forward(ctx, query, key, value, layout: VarlenLayout, scale: float):
        need_grad = any(ctx.needs_input_grad[:3])
        out, lse, seed, offset, _, _ = torch.ops.aten._efficient_attention_forward(
            query[None], key[None], value[None], None, layout.cu_seq_q, layout.cu_seq_k,
            layout.max_q, layout.max_k, 0.0, 0, need_grad, scale=scale)
        if need_grad:
            ctx.save_for_backward(query, key, value, out, lse, seed, offset)
            ctx.layout, ctx.scale = layout, scale
        return out[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        query, key, value, out, lse, seed, offset = ctx.saved_tensors
        layout = ctx.layout
        grad_q, grad_k, grad_v, _ = torch.ops.aten._efficient_attention_backward(
            grad[None].contiguous(), query[None], key[None], value[None], None, out,
            layout.cu_seq_q, layout.cu_seq_k, layout.max_q, layout.max_k, lse, 0.0, seed, offset, 0, False,
            scale=ctx.scale)
        return grad_q[0], grad_k[0], grad_v[0], None, None
