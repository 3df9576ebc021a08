"""compress / decompress / restore against the reference, over many shapes, with
NaN-poisoned outputs, float64 gradcheck and bad input."""
import pytest
import torch

from dge_explain import ops
from dge_explain.ops import reference
from dge_explain.ops.selfcheck import random_case

from conftest import poisoned_outputs

SPLITS = [((2, 1), 2), ((4, 2, 1), 4), ((4, 1), 4), ((2, 1), 4), ((3, 1), 3)]  # 3: generic step
SHAPES = [  # batch, region grid, num_extra, channels[, tokens the border cuts off the last region row, column]
    (1, (1, 1), 0, 5), (2, (2, 3), 1, 13), (3, (3, 1), 2, 21), (4, (2, 2), 1, 64),
    # a region's segment of a grid line over a page: compress walks region by region
    (2, (2, 9), 1, 1001),
    # ragged borders (cuts of S - 1 at most): the last region row and / or column cut short
    (2, (2, 3), 1, 13, (1, 1)), (1, (1, 1), 0, 5, (3, 2)), (3, (3, 2), 2, 21, (0, 3)), (2, (2, 2), 1, 64, (2, 0)),
    (2, (2, 9), 1, 1001, (1, 3)),
]


def _case(splits, size, shape, dtype, generator):
    batch, regions, num_extra, channels = shape[:4]
    cut = [min(c, size - 1) for c in (shape[4] if len(shape) > 4 else (0, 0))]
    grid = (regions[0] * size - cut[0], regions[1] * size - cut[1])
    case = random_case(batch, regions, splits, num_extra, channels, dtype, "cpu", generator,
                       grid if size == max(splits) else None)
    assert case.region_size == max(splits)
    if size != case.region_size:  # split sizes {2, 1} on 4x4 regions (Phi = {2, 4})
        indices = case.indices
        tokens = num_extra + grid[0] * grid[1]
        x = torch.randn(batch, tokens, channels, generator=generator, dtype=torch.float64).to(dtype)
        table = ops.route_to_patches(indices, splits, size, num_extra, grid)
        return table, x
    return case.table, case.x


def _ref_table(table):
    indices = torch.empty(table.region_k.shape, dtype=torch.long)
    for i, k in enumerate(table.split_sizes):
        indices[table.region_k == k] = i
    return reference.reference_table(indices, table.split_sizes, table.region_size, table.num_extra,
                                     table.grid)


def test_poisoning_reaches_uninitialised_outputs():
    with poisoned_outputs():
        assert torch.isnan(torch.empty(64)).all()
        assert torch.isnan(torch.ops.aten.empty.memory_format([8, 3])).all()


@pytest.mark.parametrize("splits,size", SPLITS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(splits, size, shape, dtype, generator):
    table, x = _case(splits, size, shape, dtype, generator)
    ref = _ref_table(table)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    with poisoned_outputs():
        comp = ops.compress(x, table)
        q2 = torch.randn(comp.shape, generator=generator, dtype=torch.float64).to(dtype)
        up = ops.decompress(q2, table, x)
        bare = ops.decompress(q2, table)
        masked = ops.decompress(q2, table, x, add_reference=False)
        restored = ops.restore(x, q2, comp, table)
    for out in (comp, up, bare, masked, restored):
        assert not torch.isnan(out).any(), "an output element was not written"
    torch.testing.assert_close(comp, reference.compress(x, ref), **tol)
    torch.testing.assert_close(up, reference.decompress(q2, ref, x), **tol)
    torch.testing.assert_close(bare, reference.decompress(q2, ref), **tol)
    torch.testing.assert_close(masked, bare, rtol=0, atol=0)
    torch.testing.assert_close(restored, reference.restore(x, q2, comp, ref), **tol)


@pytest.mark.parametrize("splits,size", SPLITS)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(splits, size, shape, generator):
    table, x = _case(splits, size, shape, torch.float64, generator)
    ref = _ref_table(table)
    q2 = torch.randn(table.total, x.shape[2], generator=generator, dtype=torch.float64)
    comp = torch.randn_like(q2)
    grad_dense = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    grad_packed = torch.randn(q2.shape, generator=generator, dtype=torch.float64)

    def grads(fn, inputs, grad):
        inputs = [t.clone().requires_grad_() for t in inputs]
        fn(*inputs).backward(grad)
        return [t.grad for t in inputs]

    for got, want in [
        (grads(lambda x: ops.compress(x, table), [x], grad_packed),
         grads(lambda x: reference.compress(x, ref), [x], grad_packed)),
        (grads(lambda d, r: ops.decompress(d, table, r), [q2, x], grad_dense),
         grads(lambda d, r: reference.decompress(d, ref, r), [q2, x], grad_dense)),
        (grads(lambda x, q, c: ops.restore(x, q, c, table), [x, q2, comp], grad_dense),
         grads(lambda x, q, c: reference.restore(x, q, c, ref), [x, q2, comp], grad_dense)),
    ]:
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_backward_does_not_mutate_the_incoming_gradient(generator):
    table, x = _case((4, 2, 1), 4, SHAPES[1], torch.float64, generator)
    x.requires_grad_()
    grad = torch.randn(table.total, x.shape[2], dtype=torch.float64, generator=generator)
    kept = grad.clone()
    ops.compress(x, table).backward(grad)
    assert torch.equal(grad, kept)


@pytest.mark.parametrize("splits,size", SPLITS)
@pytest.mark.parametrize("cut", [(0, 0), (1, 2)])
def test_gradcheck(splits, size, cut, generator):
    table, x = _case(splits, size, (2, (2, 1), 1, 3, cut), torch.float64, generator)
    x.requires_grad_()
    q2 = torch.randn(table.total, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    comp = torch.randn_like(q2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.compress(x, table), (x,))
    assert torch.autograd.gradcheck(lambda d, r: ops.decompress(d, table, r), (q2, x))
    assert torch.autograd.gradcheck(lambda d: ops.decompress(d, table), (q2,))
    assert torch.autograd.gradcheck(lambda x, q, c: ops.restore(x, q, c, table), (x, q2, comp))


def test_compress_of_a_known_case():
    x = torch.arange(9, dtype=torch.float64).view(1, 9, 1)  # cls = 0, grid 2x4 = 1..8
    table = ops.route_to_patches(torch.tensor([[[0, 1]]]), (2, 1), 2, 1)
    comp = ops.compress(x, table)
    # tokens of region (0,1) are grid (0,2),(0,3),(1,2),(1,3) = 3, 4, 7, 8
    assert comp.flatten().tolist() == [0, 1, 2, 5, 6, 5.5]
    back = ops.decompress(comp, table)
    assert back.flatten().tolist() == [0, 1, 2, 5.5, 5.5, 5, 6, 5.5, 5.5]


def test_compress_of_a_known_ragged_case():
    # cls = 0, grid 3x3 = 1..9 in 2x2 regions: the last region row and column hold one line / token
    x = torch.arange(10, dtype=torch.float64).view(1, 10, 1)
    table = ops.route_to_patches(torch.tensor([[[1, 0], [1, 1]]]), (2, 1), 2, 1, grid=(3, 3))
    assert table.grid == (3, 3) and table.tokens == 10
    comp = ops.compress(x, table)
    # (0,0): mean of 1, 2, 4, 5; (0,1) finest: 3 and 6; (1,0): 7, 8; (1,1): 9 alone
    assert comp.flatten().tolist() == [0, 3, 3, 6, 7.5, 9]
    back = ops.decompress(comp, table)
    assert back.flatten().tolist() == [0, 3, 3, 3, 3, 3, 6, 7.5, 7.5, 9]
    assert reference.compress(x, _ref_table(table)).flatten().tolist() == comp.flatten().tolist()


class TestBadInput:
    def setup_method(self):
        self.table = ops.route_to_patches(torch.zeros(2, 1, 2, dtype=torch.long), (2, 1), 2, 1)
        self.x = torch.randn(2, 9, 4)

    def test_mismatched_batch(self):
        with pytest.raises(ValueError, match=r"x has shape \(3, 9, 4\).*B=2, N=9"):
            ops.compress(torch.randn(3, 9, 4), self.table)

    def test_wrong_token_count(self):
        with pytest.raises(ValueError, match=r"x has shape \(2, 8, 4\).*1 extra \+ 2x4 grid"):
            ops.compress(torch.randn(2, 8, 4), self.table)

    def test_wrong_dtype(self):
        with pytest.raises(ValueError, match=r"x has dtype torch.float16; on cpu the ops support float32, float64"):
            ops.compress(self.x.half(), self.table)

    def test_wrong_device(self):
        with pytest.raises(ValueError, match=r"x is on meta but the patch table is on cpu"):
            ops.compress(self.x.to("meta"), self.table)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"x must be \[B, N, C\] \(3-D\), got shape \(9, 4\)"):
            ops.compress(self.x[0], self.table)

    def test_packed_rows(self):
        with pytest.raises(ValueError, match=r"delta has shape \(5, 4\) but the patch table has L=18 rows"):
            ops.decompress(torch.randn(5, 4), self.table)

    def test_reference_dtype(self):
        comp = ops.compress(self.x, self.table)
        with pytest.raises(ValueError, match=r"reference has dtype torch.float64 but delta has torch.float32"):
            ops.decompress(comp, self.table, self.x.double())

    def test_restore_channels(self):
        comp = ops.compress(self.x, self.table)
        with pytest.raises(ValueError, match=r"channel mismatch"):
            ops.restore(torch.randn(2, 9, 5), comp, comp, self.table)
