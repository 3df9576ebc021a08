"""The dense multi-granularity training path: equal to the reference, equal to
the sparse path for one-hot gates (oracle (i) of the method notes), and
differentiable in every gate."""
import pytest
import torch

from dge_explain import ops
from dge_explain.ops import reference
from dge_explain.ops.selfcheck import random_case

SPLITS = [((2, 1), 2), ((4, 2, 1), 4), ((4, 1), 4)]


@pytest.mark.parametrize("splits,size", SPLITS)
@pytest.mark.parametrize("batch,grid,num_extra,channels", [(1, (1, 1), 0, 5), (2, (2, 3), 1, 13),
                                                           (4, (3, 2), 2, 7)])
def test_matches_reference_and_sparse_path(splits, size, batch, grid, num_extra, channels, generator):
    case = random_case(batch, grid, splits, num_extra, channels, torch.float64, "cpu", generator)
    x, table = case.x, case.table
    args = (splits, size, num_extra, table.grid)
    queries = ops.multigrain_compress(x, *args)
    assert queries.shape == (batch, ops.multigrain_queries(*args), channels)
    torch.testing.assert_close(queries, reference.multigrain_compress(x, *args), rtol=1e-12, atol=1e-12)

    delta = torch.randn(queries.shape, generator=generator, dtype=torch.float64)
    gates = torch.nn.functional.one_hot(case.indices, len(splits)).double()
    mixed = ops.multigrain_restore(x, delta, gates, *args)
    torch.testing.assert_close(mixed, reference.multigrain_restore(x, delta, gates, *args),
                               rtol=1e-12, atol=1e-12)

    # The sparse path restores the chosen granularity's rows of the same delta.
    sparse_rows = _chosen_rows(delta, case)
    sparse = ops.decompress(sparse_rows, table, x)
    torch.testing.assert_close(mixed, sparse, rtol=0, atol=1e-12)


def _chosen_rows(delta, case):
    """Rows of the multigrain delta that the sparse table packs, in its order."""
    table = case.table
    height, width = table.grid
    picked = []
    for b in range(table.batch):
        rows = table.rows[table.offsets[b]:table.offsets[b + 1]].long()
        for sample, y0, x0, step in rows.tolist():
            if y0 < 0:
                picked.append(delta[b, -y0 - 1])
                continue
            k = case.region_size // step
            option = case.split_sizes.index(k)
            start = case.num_extra + sum(
                (height // (case.region_size // kk)) * (width // (case.region_size // kk))
                for kk in case.split_sizes[:option])
            picked.append(delta[b, start + (y0 // step) * (width // step) + x0 // step])
    return torch.stack(picked)


def test_every_gate_gets_a_gradient(generator):
    case = random_case(2, (2, 2), (4, 2, 1), 1, 6, torch.float64, "cpu", generator)
    args = (case.split_sizes, case.region_size, case.num_extra, case.table.grid)
    delta = torch.randn(ops.multigrain_compress(case.x, *args).shape, dtype=torch.float64,
                        generator=generator)
    gates = torch.rand(2, 2, 2, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    ops.multigrain_restore(case.x, delta, gates, *args).square().sum().backward()
    assert (gates.grad != 0).all()


def test_gradcheck(generator):
    case = random_case(2, (1, 2), (2, 1), 1, 3, torch.float64, "cpu", generator)
    args = (case.split_sizes, case.region_size, case.num_extra, case.table.grid)
    x = case.x.requires_grad_()
    delta = torch.randn(ops.multigrain_compress(x, *args).shape, dtype=torch.float64,
                        generator=generator, requires_grad=True)
    gates = torch.rand(2, 1, 2, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.multigrain_compress(x, *args), (x,))
    assert torch.autograd.gradcheck(lambda x, d, g: ops.multigrain_restore(x, d, g, *args),
                                    (x, delta, gates))


def test_ragged_grid_is_refused():
    with pytest.raises(ValueError, match=r"token grid 6x5 is not divisible by region size 2"):
        ops.multigrain_compress(torch.randn(1, 31, 4), (2, 1), None, 1, (6, 5))


def test_bad_gate_shape():
    x = torch.randn(1, 17, 4)
    delta = ops.multigrain_compress(x, (2, 1), None, 1, (4, 4))
    with pytest.raises(ValueError, match=r"gates has shape \(1, 2, 2, 3\), expected \(1, 2, 2, 2\)"):
        ops.multigrain_restore(x, delta, torch.zeros(1, 2, 2, 3), (2, 1), None, 1, (4, 4))


@pytest.mark.parametrize("grid,step,extra", [((12, 8), 1, 0), ((12, 8), 2, 1), ((8, 16), 4, 2), ((6, 6), 3, 1)])
def test_window_means_equal_average_pooling(grid, step, extra, generator):
    """The routers' region means and the training path's coarse queries: equal
    to avg_pool2d, on the spatial tokens after the extra ones (a batch-strided
    view), with the same gradient."""
    from dge_explain.ops.multigrain import window_means

    x = torch.randn(3, extra + grid[0] * grid[1], 7, generator=generator, dtype=torch.float64, requires_grad=True)
    got = window_means(x[:, extra:], grid, step)
    image = x[:, extra:].transpose(1, 2).reshape(3, 7, *grid)
    want = torch.nn.functional.avg_pool2d(image, step).permute(0, 2, 3, 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weight = torch.randn(got.shape, generator=generator, dtype=torch.float64)
    grad, = torch.autograd.grad((got * weight).sum(), x)
    want_grad, = torch.autograd.grad((want * weight).sum(), x)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
