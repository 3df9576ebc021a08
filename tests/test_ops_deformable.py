"""deformable_attention (DPVT's point attention) against the grid_sample
reference over many shapes, points outside the map, gradcheck, the plain
bilinear sampling that zero offsets reduce it to, the packed-query reference
points, and bad input."""
import pytest
import torch

from dge_explain import ops
from dge_explain.ops import reference
from dge_explain.ops.selfcheck import off_grid_points

from conftest import poisoned_outputs


def _problem(lengths, height, width, heads, dim, points, dtype, generator, margin=2.0):
    """Random rows; locations up to `margin` pixels beyond the map, off its integer lines."""
    offsets = torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()])
    rows = int(offsets[-1])
    value = torch.randn(len(lengths), height, width, heads, dim, generator=generator, dtype=torch.float64)
    locations = off_grid_points(rows, heads, points, (height, width), margin, generator)
    weights = torch.rand(rows, heads, points, generator=generator, dtype=torch.float64).softmax(-1)
    return value.to(dtype), locations.to(dtype), weights.to(dtype), offsets


CASES = [  # rows per sample, map H x W, heads, head dim, points
    ([5], 1, 1, 1, 1, 1), ([7, 3], 4, 6, 2, 8, 4), ([1, 40, 9], 7, 5, 3, 40, 3),
    ([64, 64], 8, 8, 1, 64, 4), ([0, 6], 3, 3, 2, 5, 2), ([12], 2, 9, 4, 33, 8),
]


@pytest.mark.parametrize("lengths,height,width,heads,dim,points", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_reference(lengths, height, width, heads, dim, points, dtype, generator):
    value, locations, weights, offsets = _problem(lengths, height, width, heads, dim, points, dtype, generator)
    with poisoned_outputs():
        out = ops.deformable_attention(value, locations, weights, offsets)
    assert out.shape == (sum(lengths), heads, dim)
    assert not torch.isnan(out).any(), "an output element was not written"
    want = reference.deformable_attention(value.double(), locations.double(), weights.double(), offsets)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.double(), want, **tol)

    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(dtype)
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    with poisoned_outputs():
        ops.deformable_attention(*inputs, offsets).backward(grad)
    ref_inputs = [t.double().requires_grad_() for t in (value, locations, weights)]
    reference.deformable_attention(*ref_inputs, offsets).backward(grad.double())
    for got, expected in zip(inputs, ref_inputs):
        assert not torch.isnan(got.grad).any()
        torch.testing.assert_close(got.grad.double(), expected.grad, **tol)


def test_gradcheck(generator):
    value, locations, weights, offsets = _problem([3, 4], 4, 5, 2, 3, 3, torch.float64, generator)
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, l, w: ops.deformable_attention(v, l, w, offsets), inputs)


def test_points_outside_the_map_sample_zero_with_zero_gradients(generator):
    value, _, weights, offsets = _problem([4], 3, 4, 2, 6, 3, torch.float64, generator)
    far = torch.tensor([[-1.0, 1.0], [4.0, 1.0], [1.0, -1.5], [1.0, 3.0], [1e30, 0.0], [float("nan"), 1.0],
                        [float("inf"), 1.0], [1.0, -float("inf")]], dtype=torch.float64)
    locations = far[torch.randint(0, len(far), (4, 2, 3), generator=generator)].requires_grad_()
    value.requires_grad_()
    out = ops.deformable_attention(value, locations, weights, offsets)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(locations.grad, torch.zeros_like(locations)) and torch.equal(value.grad, torch.zeros_like(value))


def test_a_point_half_outside_keeps_its_inside_corners(generator):
    value = torch.randn(1, 2, 3, 1, 4, generator=generator, dtype=torch.float64)
    locations = torch.tensor([[[[-0.25, 1.0], [2.5, 0.0]]]], dtype=torch.float64)   # x = -0.25, and x = 2.5
    weights = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    out = ops.deformable_attention(value, locations, weights, torch.tensor([0, 1]))
    torch.testing.assert_close(out[0, 0], 0.75 * value[0, 1, 0, 0])
    weights = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    out = ops.deformable_attention(value, locations, weights, torch.tensor([0, 1]))
    torch.testing.assert_close(out[0, 0], 0.5 * value[0, 0, 2, 0])


def test_zero_offsets_reproduce_plain_bilinear_sampling(generator):
    """At the token positions every point reads its own token (weights summing to 1);
    halfway between tokens, the mean of the neighbours."""
    value = torch.randn(2, 4, 6, 3, 5, generator=generator, dtype=torch.float64)
    centres = ops.grid_centres(4, 6, dtype=torch.float64)                        # [24, 2]
    locations = centres.view(1, 24, 1, 1, 2).expand(2, 24, 3, 4, 2).reshape(48, 3, 4, 2)
    weights = torch.rand(48, 3, 4, generator=generator, dtype=torch.float64).softmax(-1)
    offsets = torch.tensor([0, 24, 48])
    out = ops.deformable_attention(value, locations, weights, offsets)
    torch.testing.assert_close(out, value.reshape(48, 3, 5))
    blocks = ops.grid_centres(4, 6, step=2, dtype=torch.float64)                 # 2x2 block centres
    locations = blocks.view(1, 6, 1, 1, 2).expand(2, 6, 3, 1, 2).reshape(12, 3, 1, 2)
    out = ops.deformable_attention(value, locations, torch.ones(12, 3, 1, dtype=torch.float64),
                                   torch.tensor([0, 6, 12]))
    means = torch.nn.functional.avg_pool2d(value.flatten(3).permute(0, 3, 1, 2), 2)   # [B, h*d, 2, 3]
    torch.testing.assert_close(out, means.flatten(2).transpose(1, 2).reshape(12, 3, 5))


def test_packed_queries_refer_to_their_patch_centres(generator):
    """A compressed query's reference point is its patch's centre: with zero
    offsets it reads the patch's mean where the patch is at most 2 x 2, i.e.
    exactly what compress gives the DGE's queries."""
    indices = torch.randint(0, 2, (2, 3, 2), generator=generator)
    table = ops.route_to_patches(indices, (2, 1), 2, 0)
    centres = ops.patch_centres(table, torch.float64)
    rows = table.rows.long()
    torch.testing.assert_close(centres, torch.stack([rows[:, 2], rows[:, 1]], 1).double() + (rows[:, 3:] - 1) / 2)
    value = torch.randn(2, 6, 4, 2, 3, generator=generator, dtype=torch.float64)
    locations = centres.view(-1, 1, 1, 2).expand(-1, 2, 1, 2).contiguous()
    out = ops.deformable_attention(value, locations, torch.ones(table.total, 2, 1, dtype=torch.float64), table)
    torch.testing.assert_close(out.reshape(table.total, 6), ops.compress(value.reshape(2, 24, 6), table))


def test_patch_centres_refuse_extra_tokens(generator):
    table = ops.route_to_patches(torch.zeros(1, 2, 2, dtype=torch.long), (2, 1), 2, 1)
    with pytest.raises(ValueError, match="extra-token rows"):
        ops.patch_centres(table)


def test_grid_centres_are_raster_order_x_then_y():
    centres = ops.grid_centres(4, 6, step=2)
    assert centres.tolist()[:4] == [[0.5, 0.5], [2.5, 0.5], [4.5, 0.5], [0.5, 2.5]]
    assert ops.grid_centres(2, 3).tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]


def test_reference_fallback_matches(generator):
    value, locations, weights, offsets = _problem([5, 2], 3, 4, 2, 7, 4, torch.float64, generator)
    with ops.use_backend("reference"):
        slow = ops.deformable_attention(value, locations, weights, offsets)
    torch.testing.assert_close(slow, ops.deformable_attention(value, locations, weights, offsets))


@pytest.mark.parametrize("change,message", [
    (lambda v, l, w, o: (v[0], l, w, o), r"value must be \[B, H, W, h, d\]"),
    (lambda v, l, w, o: (v, l[:, :1], w[:, :1], o), r"locations .* must be \[L, 2, P, 2\]"),
    (lambda v, l, w, o: (v, l, w[..., :1], o), r"weights .* must be"),
    (lambda v, l, w, o: (v, l, w, o[:2]), r"offsets has shape \(2,\) but value \(2, 3, 4, 2, 7\) and locations \(7, 2, 4, 2\) give batch 2: expected \[3\]"),
    (lambda v, l, w, o: (v, l, w, torch.tensor([0, 5, 3])), "offsets must rise from 0 to L=7"),
    (lambda v, l, w, o: (v, l.float(), w, o), "locations has dtype torch.float32 but value has torch.float64"),
    (lambda v, l, w, o: (v.int(), l, w, o), "value has dtype torch.int32"),
])
def test_bad_input_names_the_argument(change, message, generator):
    args = _problem([5, 2], 3, 4, 2, 7, 4, torch.float64, generator)
    with pytest.raises(ValueError, match=message):
        ops.deformable_attention(*change(*args))


def test_the_kernel_refuses_misuse_from_cpp(generator):
    value, locations, weights, offsets = _problem([5, 2], 3, 4, 2, 7, 4, torch.float64, generator)
    with pytest.raises(ValueError, match="offsets must be int64"):
        torch.ops.dge_explain.deformable_attention_forward(value, locations, weights, offsets.int())
    with pytest.raises(ValueError, match="grad_out must be"):
        torch.ops.dge_explain.deformable_attention_backward(value[0], value, locations, weights, offsets)
