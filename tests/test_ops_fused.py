"""The DGE attention on PyTorch's fused kernels (dge_explain/ops/fused_attention.py).

Everywhere: the wiring runs on the CPU against stand-ins registered for the four
aten ops it reaches (FlashAttention's and the memory-efficient kernel's forward
and backward, in their variable-length form).  Each stand-in first enforces the
contract of the real CUDA entry point (dtypes, head dim, unit last stride, int32
contiguous cumulative lengths that end at the row counts, max lengths covering
every sample, the batch-1 layout of the efficient kernel) and then computes plain
per-sample attention in float32, so a wrong layout, offset, length or scale fails
here against the reference op.  With a GPU: the real kernels against the reference.
"""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from dge_explain import ops
from dge_explain.models.attention import _keys_values
from dge_explain.ops import fused_attention, reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "no CUDA device visible (the fused kernels' wiring is checked on the CPU by "
    "test_wiring_against_the_reference_on_cpu)"))

CASES = [([5], 1, 64, 7), ([17, 3], 3, 64, 197), ([1, 40, 0, 12], 2, 32, 50), ([130, 70], 4, 128, 65)]
EMPTY = ([0], 2, 16, 9)     # L = 0: never handed to a fused kernel (kernel_for says None)


def _check_cumulative(name: str, cu: torch.Tensor, rows: int, longest: int) -> list[int]:
    assert cu.dtype == torch.int32 and cu.dim() == 1 and cu.is_contiguous(), f"{name}: {cu.dtype} {cu.shape}"
    bounds = cu.tolist()
    assert bounds[0] == 0 and bounds[-1] == rows, f"{name} {bounds} must run from 0 to {rows}"
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    assert min(lengths) >= 0 and max(lengths) <= longest, f"{name} lengths {lengths} vs max {longest}"
    return bounds


def _per_sample(q, k, v, cu_q, cu_k, scale):
    """[T_q, h, d] float32 attention of each query segment to its key segment."""
    out = torch.zeros(q.shape, dtype=torch.float32)
    for b in range(len(cu_q) - 1):
        rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        qb, kb, vb = (t.float().transpose(0, 1) for t in (q[rows], k[keys], v[keys]))
        out[rows] = (torch.softmax(scale * qb @ kb.transpose(1, 2), -1) @ vb).transpose(0, 1)
    return out


def _check_inputs(q, k, v, dtypes, max_head_dim=None, alignment=1):
    assert q.dtype in dtypes and k.dtype == q.dtype == v.dtype, (q.dtype, k.dtype, v.dtype)
    assert all(t.stride(-1) == 1 for t in (q, k, v)), "last dim must have unit stride"
    head_dim = q.shape[-1]
    assert head_dim % alignment == 0 and (max_head_dim is None or head_dim <= max_head_dim), head_dim
    assert q.shape[-2] == k.shape[-2] == v.shape[-2], "heads"


def _flash_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, **kw):
    assert dropout_p == 0 and not is_causal and q.dim() == 3 and kw.get("window_size_left", -1) in (-1, None)
    _check_inputs(q, k, v, fused_attention.FLASH_DTYPES, fused_attention.FLASH_MAX_HEAD_DIM, 8)
    bq, bk = _check_cumulative("cu_seq_q", cu_q, q.shape[0], max_q), _check_cumulative("cu_seq_k", cu_k, k.shape[0], max_k)
    out = _per_sample(q, k, v, bq, bk, kw["scale"]).to(q.dtype)
    return out, torch.zeros(q.shape[1], q.shape[0]), torch.zeros(2, dtype=torch.uint64), torch.empty(0), torch.empty(0)


def _gradients(grad, q, k, v, bq, bk, scale):
    """dq, dk, dv by hand (the stand-ins run below autograd): per segment,
    P = softmax(s Q K^T), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = s dS K, dK = s dS^T Q."""
    grads = [torch.zeros(t.shape, dtype=torch.float32) for t in (q, k, v)]
    for b in range(len(bq) - 1):
        rows, keys = slice(bq[b], bq[b + 1]), slice(bk[b], bk[b + 1])
        qb, kb, vb, gb = (t.float().transpose(0, 1) for t in (q[rows], k[keys], v[keys], grad[rows]))
        probs = torch.softmax(scale * qb @ kb.transpose(1, 2), -1)
        out = probs @ vb
        ds = probs * (gb @ vb.transpose(1, 2) - (gb * out).sum(-1, keepdim=True))
        for g, part in zip(grads, (scale * ds @ kb, scale * ds.transpose(1, 2) @ qb, probs.transpose(1, 2) @ gb)):
            g[rows if g is grads[0] else keys] = part.transpose(0, 1)
    return [g.to(t.dtype) for g, t in zip(grads, (q, k, v))]


def _flash_backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, rng, unused, **kw):
    assert dropout_p == 0 and not is_causal and grad.shape == out.shape == q.shape
    _check_inputs(q, k, v, fused_attention.FLASH_DTYPES, fused_attention.FLASH_MAX_HEAD_DIM, 8)
    assert lse.shape == (q.shape[1], q.shape[0]), lse.shape
    bq, bk = _check_cumulative("cu_seq_q", cu_q, q.shape[0], max_q), _check_cumulative("cu_seq_k", cu_k, k.shape[0], max_k)
    return tuple(_gradients(grad, q, k, v, bq, bk, kw["scale"]))


def _efficient_forward(q, k, v, bias, cu_q, cu_k, max_q, max_k, dropout_p, mask_type, compute_lse=False, **kw):
    assert q.dim() == 4 and q.shape[0] == 1 and k.shape[0] == v.shape[0] == 1, "varlen form is batch 1"
    assert bias is None and dropout_p == 0 and mask_type == 0
    q, k, v = q[0], k[0], v[0]
    _check_inputs(q, k, v, fused_attention.EFFICIENT_DTYPES, None, 16 // q.element_size())
    bq, bk = _check_cumulative("cu_seqlens_q", cu_q, q.shape[0], max_q), _check_cumulative("cu_seqlens_k", cu_k, k.shape[0], max_k)
    out = _per_sample(q, k, v, bq, bk, kw["scale"]).to(q.dtype)[None]
    lse = torch.zeros(1, q.shape[1], (q.shape[0] + 31) // 32 * 32) if compute_lse else torch.empty(0)
    return out, lse, torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64), max_q, max_k


def _efficient_backward(grad, q, k, v, bias, out, cu_q, cu_k, max_q, max_k, lse, dropout_p, seed, offset,
                        mask_type, bias_requires_grad, **kw):
    assert grad.is_contiguous() and grad.shape == out.shape == q.shape and q.shape[0] == 1
    assert bias is None and dropout_p == 0 and mask_type == 0 and not bias_requires_grad and lse.numel()
    q, k, v = q[0], k[0], v[0]
    _check_inputs(q, k, v, fused_attention.EFFICIENT_DTYPES, None, 16 // q.element_size())
    bq, bk = _check_cumulative("cu_seqlens_q", cu_q, q.shape[0], max_q), _check_cumulative("cu_seqlens_k", cu_k, k.shape[0], max_k)
    grads = _gradients(grad[0], q, k, v, bq, bk, kw["scale"])
    return grads[0][None], grads[1][None], grads[2][None], torch.empty(0)


@contextlib.contextmanager
def cpu_standins():
    """The four aten ops get CPU kernels for the duration (they have CUDA ones only)."""
    library = torch.library.Library("aten", "IMPL")
    for name, kernel in (("_flash_attention_forward", _flash_forward), ("_flash_attention_backward", _flash_backward),
                         ("_efficient_attention_forward", _efficient_forward),
                         ("_efficient_attention_backward", _efficient_backward)):
        library.impl(name, kernel, "CPU")
    try:
        yield
    finally:
        library._destroy()


def _case(lengths, heads, head_dim, keys, generator):
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    channels = heads * head_dim
    q = torch.randn(int(offsets[-1]), channels, generator=generator, dtype=torch.float64).view(-1, heads, head_dim)
    kv = torch.randn(len(lengths), keys, 2 * channels, generator=generator, dtype=torch.float64)
    return q, kv, offsets


def _compare(kernel, dtype, q64, kv64, offsets, lengths, heads, device, tolerance):
    q = q64.to(device, dtype).requires_grad_()
    kv = kv64.to(device, dtype).requires_grad_()
    k, v = _keys_values(kv, heads)
    scale = 0.7 * q.shape[-1] ** -0.5
    out = fused_attention.attend(kernel, q, k, v, offsets.to(device), max(lengths), scale) if kernel else \
        ops.varlen_attention(q, k, v, offsets.to(device), scale)
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.to(device, dtype))
    q_ref, kv_ref = q64.clone().requires_grad_(), kv64.clone().requires_grad_()
    want = reference.varlen_attention(q_ref, *_keys_values(kv_ref, heads), offsets, scale)
    want.backward(grad)
    want = want.detach()
    for got, ref, name in ((out, want, "out"), (q.grad, q_ref.grad, "dq"), (kv.grad, kv_ref.grad, "dkv")):
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        if ref.numel():
            error = float((got.detach().double().cpu() - ref).abs().max())
            assert error <= tolerance * max(1.0, float(ref.abs().max())), (name, error)


TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("kernel,dtype", [("flash", torch.float16), ("flash", torch.bfloat16),
                                          ("efficient", torch.float32), ("efficient", torch.bfloat16)])
@pytest.mark.parametrize("lengths,heads,head_dim,keys", CASES)
def test_wiring_against_the_reference_on_cpu(kernel, dtype, lengths, heads, head_dim, keys, generator):
    q64, kv64, offsets = _case(lengths, heads, head_dim, keys, generator)
    with cpu_standins():
        _compare(kernel, dtype, q64, kv64, offsets, lengths, heads, "cpu", TOLERANCE[dtype])


@pytest.mark.parametrize("mutation", ["int64 offsets", "max_q short", "a key moved to the next sample", "keys untransposed"])
@pytest.mark.parametrize("kernel", ["flash", "efficient"])
def test_standins_catch_wrong_wiring(kernel, mutation, generator, monkeypatch):
    """The CPU check has teeth: each seeded wiring bug fails the contract or the values."""
    q64, kv64, offsets = _case([17, 3], 2, 32, 9, generator)
    right = fused_attention.varlen_layout

    def wrong(q, k, v, offsets, max_q):
        layout = right(q, k, v, offsets, max_q)
        if mutation == "int64 offsets":
            return dataclasses.replace(layout, cu_seq_q=layout.cu_seq_q.long())
        if mutation == "max_q short":
            return dataclasses.replace(layout, max_q=layout.max_q - 1)
        if mutation == "a key moved to the next sample":
            return dataclasses.replace(layout, cu_seq_k=layout.cu_seq_k - torch.tensor([0, 1, 0], dtype=torch.int32),
                                       max_k=layout.max_k + 1)
        return dataclasses.replace(layout, key=k.reshape(-1, k.shape[1], k.shape[3]))

    monkeypatch.setattr(fused_attention, "varlen_layout", wrong)
    dtype = torch.float16 if kernel == "flash" else torch.float32
    with cpu_standins(), pytest.raises((AssertionError, RuntimeError)):
        _compare(kernel, dtype, q64, kv64, offsets, [17, 3], 2, "cpu", TOLERANCE[dtype])


def test_keys_and_values_are_views_of_the_fused_projection(generator):
    q, kv, offsets = _case([3, 4], 2, 16, 5, generator)
    k, v = _keys_values(kv, 2)
    layout = fused_attention.varlen_layout(q, k, v, offsets, 4)
    for rows, dense in ((layout.key, k), (layout.value, v)):
        assert rows.shape == (10, 2, 16) and rows.data_ptr() == dense.data_ptr() and rows._base is not None
        assert torch.equal(rows.view(2, 5, 2, 16).transpose(1, 2), dense)
    assert layout.cu_seq_k.tolist() == [0, 5, 10] and layout.cu_seq_q.tolist() == [0, 3, 7]
    assert (layout.max_q, layout.max_k) == (4, 5)


@pytest.mark.parametrize("dtype,head_dim,capability,expected", [
    (torch.float16, 64, (9, 0), "flash"), (torch.bfloat16, 128, (8, 0), "flash"),
    (torch.bfloat16, 256, (9, 0), "flash"), (torch.float16, 264, (9, 0), "efficient"),
    (torch.float16, 64, (7, 5), "efficient"), (torch.float16, 12, (9, 0), None),
    (torch.float32, 64, (9, 0), "efficient"), (torch.float32, 12, (9, 0), "efficient"),
    (torch.float32, 13, (9, 0), None), (torch.float64, 64, (9, 0), None),
    (torch.bfloat16, 64, (7, 5), None), (torch.bfloat16, 224, (8, 6), "efficient"),
    (torch.float16, 256, (12, 0), "efficient"), (torch.float16, 192, (8, 9), "flash")])
def test_which_kernel_serves(dtype, head_dim, capability, expected):
    assert fused_attention.fused_kernel(dtype, head_dim, capability) == expected


def test_cpu_tensors_never_take_the_fused_path(generator):
    q, kv, offsets = _case([3], 1, 8, 4, generator)
    assert fused_attention.kernel_for(q.float()) is None


def test_unknown_kernel_is_refused(generator):
    q, kv, offsets = _case([3], 1, 8, 4, generator)
    with pytest.raises(ValueError, match="fused kernel must be one of"):
        fused_attention.attend("triton", q, *_keys_values(kv, 1), offsets, 3, 1.0)


def test_no_query_rows_are_refused(generator):
    q, kv, offsets = _case(*EMPTY, generator)
    with pytest.raises(ValueError, match="at least one query row"):
        fused_attention.attend("flash", q.half(), *_keys_values(kv.half(), 2), offsets, 0, 1.0)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lengths,heads,head_dim,keys", [*CASES, EMPTY])
def test_fused_kernels_on_cuda(dtype, lengths, heads, head_dim, keys, generator):
    q64, kv64, offsets = _case(lengths, heads, head_dim, keys, generator)
    expected = fused_attention.fused_kernel(dtype, head_dim, torch.cuda.get_device_capability()) \
        if sum(lengths) else None
    assert fused_attention.kernel_for(q64.to("cuda", dtype)) == expected
    _compare(None, dtype, q64, kv64, offsets, lengths, heads, "cuda", TOLERANCE[dtype])
