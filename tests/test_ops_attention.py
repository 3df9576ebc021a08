"""varlen_attention against the per-sample padded-free reference and against
dense SDPA, over many shapes; gradcheck; strided views; bad input."""
import pytest
import torch
import torch.nn.functional as F

from dge_explain import ops
from dge_explain.ops import reference

from conftest import poisoned_outputs


def _problem(lengths, heads, head_dim, keys, dtype, generator):
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    randn = lambda *s: torch.randn(*s, generator=generator, dtype=torch.float64).to(dtype)
    q = randn(int(offsets[-1]), heads, head_dim)
    k = randn(len(lengths), heads, keys, head_dim)
    v = randn(len(lengths), heads, keys, head_dim)
    return q, k, v, offsets


CASES = [  # lengths per sample, heads, head dim, keys
    ([5], 1, 8, 7), ([17, 3], 3, 24, 37), ([1, 40, 9, 12], 2, 13, 50), ([300, 70], 3, 64, 197),
    ([0, 4], 2, 16, 5),
]


@pytest.mark.parametrize("lengths,heads,head_dim,keys", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_reference(lengths, heads, head_dim, keys, dtype, generator):
    q, k, v, offsets = _problem(lengths, heads, head_dim, keys, dtype, generator)
    scale = head_dim ** -0.5
    with poisoned_outputs():
        out = ops.varlen_attention(q, k, v, offsets)
    assert not torch.isnan(out).any(), "an output element was not written"
    want = reference.varlen_attention(q.double(), k.double(), v.double(), offsets, scale)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out.double(), want, **tol)

    grad = torch.randn(q.shape, generator=generator, dtype=torch.float64).to(dtype)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    with poisoned_outputs():
        ops.varlen_attention(*inputs, offsets).backward(grad)
    ref_inputs = [t.double().requires_grad_() for t in (q, k, v)]
    reference.varlen_attention(*ref_inputs, offsets, scale).backward(grad.double())
    for got, expected in zip(inputs, ref_inputs):
        assert not torch.isnan(got.grad).any()
        torch.testing.assert_close(got.grad.double(), expected.grad, **tol)


def test_equals_dense_sdpa_when_every_sample_is_full(generator):
    q, k, v, offsets = _problem([20, 20, 20], 3, 16, 20, torch.float64, generator)
    dense = F.scaled_dot_product_attention(q.view(3, 20, 3, 16).transpose(1, 2), k, v)
    out = ops.varlen_attention(q, k, v, offsets)
    torch.testing.assert_close(out.view(3, 20, 3, 16), dense.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_strided_views_of_a_fused_kv_projection(generator):
    """k and v as permuted views of one [B, N, 2, h, d] tensor, q a view too."""
    kv = torch.randn(2, 11, 2, 3, 8, generator=generator, dtype=torch.float64)
    k, v = kv[:, :, 0].permute(0, 2, 1, 3), kv[:, :, 1].permute(0, 2, 1, 3)
    q = torch.randn(9, 48, generator=generator, dtype=torch.float64)[:, :24].view(9, 3, 8)
    offsets = torch.tensor([0, 4, 9])
    out = ops.varlen_attention(q, k, v, offsets, 0.3)
    want = reference.varlen_attention(q, k.contiguous(), v.contiguous(), offsets, 0.3)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_accepts_a_patch_table(generator):
    table = ops.route_to_patches(torch.randint(0, 2, (2, 2, 2), generator=generator), (2, 1), 2, 1)
    q, k, v, _ = _problem(table.lengths.tolist(), 2, 8, 17, torch.float64, generator)
    torch.testing.assert_close(ops.varlen_attention(q, k, v, table),
                               ops.varlen_attention(q, k, v, table.offsets))


def test_gradcheck(generator):
    q, k, v, offsets = _problem([3, 1, 4], 2, 5, 6, torch.float64, generator)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: ops.varlen_attention(q, k, v, offsets, 0.7), inputs)


def test_inference_does_not_keep_softmax_statistics(generator):
    q, k, v, offsets = _problem([3, 4], 2, 8, 6, torch.float32, generator)
    out = ops.varlen_attention(q, k, v, offsets)
    assert out.grad_fn is None


class TestBadInput:
    def setup_method(self):
        g = torch.Generator().manual_seed(0)
        self.q, self.k, self.v, self.offsets = _problem([3, 4], 2, 8, 6, torch.float32, g)

    def test_offsets_length(self):
        with pytest.raises(ValueError, match=r"offsets has shape \(2,\) but q \(7, 2, 8\) and k \(2, 2, 6, 8\) give batch 2: expected \[3\]"):
            ops.varlen_attention(self.q, self.k, self.v, self.offsets[:2])

    def test_offsets_total(self):
        with pytest.raises(ValueError, match=r"offsets must rise from 0 to L=7, got \[0, 3, 8\]"):
            ops.varlen_attention(self.q, self.k, self.v, torch.tensor([0, 3, 8]))

    def test_head_mismatch(self):
        with pytest.raises(ValueError, match=r"q \(7, 2, 8\) and k \(2, 3, 6, 8\) disagree"):
            ops.varlen_attention(self.q, torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8), self.offsets)

    def test_dtype_mismatch(self):
        with pytest.raises(ValueError, match=r"k has dtype torch.float64 but q has torch.float32"):
            ops.varlen_attention(self.q, self.k.double(), self.v, self.offsets)

    def test_kv_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"k \(2, 2, 6, 8\) and v \(2, 2, 5, 8\) differ"):
            ops.varlen_attention(self.q, self.k, self.v[:, :, :5], self.offsets)

    def test_rank(self):
        with pytest.raises(ValueError, match=r"q must be \[L, h, d\] \(3-D\), got shape \(7, 16\)"):
            ops.varlen_attention(self.q.flatten(1), self.k, self.v, self.offsets)

    def test_unsupported_dtype(self):
        with pytest.raises(ValueError, match=r"q has dtype torch.bfloat16; on cpu"):
            ops.varlen_attention(*(t.bfloat16() for t in (self.q, self.k, self.v)), self.offsets)
