"""route_to_patches: the compiled table equals the reference, and the layout is
the documented one (extra rows first, regions in raster order, sub-patches in
raster order)."""
import pytest
import torch

from dge_explain import ops
from dge_explain.ops import reference
from dge_explain.ops.selfcheck import random_case

from conftest import poisoned_outputs

# (split_sizes, region_size): Phi = {1,2}, {1,2,4}, {1,4} and {2,4} as split sizes S/phi.
SPLITS = [((2, 1), 2), ((4, 2, 1), 4), ((4, 1), 4), ((2, 1), 4)]
GRIDS = [(1, 1), (2, 3), (3, 1), (4, 4)]


def _fields(table):
    return (table.rows, table.region_start, table.region_k, table.offsets, table.lengths)


@pytest.mark.parametrize("splits,size", SPLITS)
@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("num_extra", [0, 1, 2])
@pytest.mark.parametrize("grid", GRIDS)
def test_route_matches_reference(splits, size, batch, num_extra, grid, generator):
    indices = torch.randint(0, len(splits), (batch, *grid), generator=generator)
    with poisoned_outputs():
        table = ops.route_to_patches(indices, splits, size, num_extra)
    expected = reference.reference_table(indices, splits, size, num_extra)
    for got, want in zip(_fields(table), _fields(expected)):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)
    assert table.lengths.device.type == "cpu"
    k = torch.tensor(splits)[indices]
    assert table.lengths.tolist() == (num_extra + (k * k).flatten(1).sum(1)).tolist()


@pytest.mark.parametrize("splits,size", SPLITS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("num_extra", [0, 2])
@pytest.mark.parametrize("token_grid", [(1, 1), (3, 5), (5, 2), (7, 9)])
def test_route_at_ragged_borders_matches_reference(splits, size, batch, num_extra, token_grid, generator):
    regions = ops.region_grid(token_grid, size, ragged=True)
    indices = torch.randint(0, len(splits), (batch, *regions), generator=generator)
    with poisoned_outputs():
        table = ops.route_to_patches(indices, splits, size, num_extra, token_grid)
    expected = reference.reference_table(indices, splits, size, num_extra, token_grid)
    for got, want in zip(_fields(table), _fields(expected)):
        assert torch.equal(got, want)
    assert table.grid == token_grid and table.tokens == num_extra + token_grid[0] * token_grid[1]
    # rows per region: the sub-patches that meet the grid
    rows = ops.region_rows(token_grid, size, splits)
    per_region = rows.expand(batch, *rows.shape).gather(-1, indices.unsqueeze(-1)).squeeze(-1)
    assert table.lengths.tolist() == (num_extra + per_region.flatten(1).sum(1)).tolist()
    covering, area = reference.token_rows(table)          # raises if not a partition
    assert torch.equal(torch.bincount(covering.flatten(), minlength=table.total), area)


def test_layout_of_a_known_ragged_case():
    # a 3x5 grid in 2x2 regions: the last region row holds one line, the last column one token
    table = ops.route_to_patches(torch.tensor([[[0, 1, 0], [1, 0, 1]]]), (2, 1), 2, 1, grid=(3, 5))
    assert table.rows.tolist() == [
        [0, -1, 0, 1],                                          # cls
        [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1],  # region (0,0), whole, finest
        [0, 0, 2, 2],                                           # region (0,1): one 2x2 patch
        [0, 0, 4, 1], [0, 1, 4, 1],                             # region (0,2), 2x1 tokens, finest
        [0, 2, 0, 2],                                           # region (1,0), 1x2 tokens, one patch
        [0, 2, 2, 1], [0, 2, 3, 1],                             # region (1,1), 1x2 tokens, finest
        [0, 2, 4, 2],                                           # region (1,2): its single token
    ]
    assert table.region_start.tolist() == [[[1, 5, 6], [8, 9, 11]]]
    assert table.offsets.tolist() == [0, 12] and table.lengths.tolist() == [12]


def test_layout_of_a_known_case():
    # One sample, 1 extra token, S = 2, regions: (0,0) finest (k=2), (0,1) coarse (k=1).
    table = ops.route_to_patches(torch.tensor([[[0, 1]]]), (2, 1), 2, 1)
    assert table.rows.tolist() == [
        [0, -1, 0, 1],                                          # cls
        [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1],  # region (0,0), raster
        [0, 0, 2, 2],                                           # region (0,1): one 2x2 patch
    ]
    assert table.region_start.tolist() == [[[1, 5]]]
    assert table.region_k.tolist() == [[[2, 1]]]
    assert table.offsets.tolist() == [0, 6]
    assert table.grid == (2, 4) and table.tokens == 9 and table.total == 6


def test_rows_partition_the_tokens(generator):
    case = random_case(3, (3, 2), (4, 2, 1), 2, 4, torch.float64, "cpu", generator)
    covering, area = reference.token_rows(case.table)   # raises if not a partition
    counts = torch.bincount(covering.flatten(), minlength=case.table.total)
    assert torch.equal(counts, area)


def test_int32_indices_are_accepted():
    indices = torch.tensor([[[1, 0]]], dtype=torch.int32)
    table = ops.route_to_patches(indices, (2, 1))
    assert table.total == 5


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([[[0, 2]]]), r"gate index 2 at sample 0, region \(0, 1\); valid indices are 0..1"),
    (torch.tensor([[[-1, 0]]]), r"gate index -1 at sample 0, region \(0, 0\)"),
])
def test_out_of_range_gate_index(bad, match):
    with pytest.raises(ValueError, match=match):
        ops.route_to_patches(bad, (2, 1))
    with ops.use_backend("reference"), pytest.raises(ValueError, match=match):
        ops.route_to_patches(bad, (2, 1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(indices=torch.zeros(2, 3, dtype=torch.long)), r"indices must be \[B, Hr, Wr\].*\(2, 3\)"),
    (dict(indices=torch.zeros(1, 2, 2)), r"indices must hold integer gate indices.*float32"),
    (dict(split_sizes=(3, 2)), r"every split size must divide region_size 3"),
    (dict(split_sizes=()), r"split_sizes must not be empty"),
    (dict(num_extra=-1), r"num_extra must be >= 0"),
])
def test_bad_route_arguments(kwargs, match):
    args = dict(indices=torch.zeros(1, 2, 2, dtype=torch.long), split_sizes=(2, 1), num_extra=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.route_to_patches(args["indices"], args["split_sizes"], None, args["num_extra"])


def test_region_grid_refuses_ragged_grids():
    assert ops.region_grid((16, 8), 4) == (4, 2)
    with pytest.raises(ValueError, match=r"token grid 14x14 is not divisible by region size 4.*16x16"):
        ops.region_grid((14, 14), 4)
    assert ops.region_grid((14, 13), 4, ragged=True) == (4, 4)


def test_indices_that_do_not_tile_the_grid_are_refused():
    indices = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"indices \[1, 2, 2\] do not tile the token grid 5x4 in regions of 2: "
                                         r"expected \[B, 3, 2\]"):
        ops.route_to_patches(indices, (2, 1), 2, 0, grid=(5, 4))
    # the kernels' own contract check, for a caller from C++
    with pytest.raises(ValueError, match=r"indices \[1, 2, 2\] do not tile the token grid 5x4 in 2x2 regions"):
        torch.ops.dge_explain.route_to_patches(indices, [2, 1], 2, 0, 5, 4)
    table = ops.route_to_patches(indices, (2, 1), 2, 0, grid=(3, 4))
    with pytest.raises(ValueError, match=r"grid 5x4 does not tile into region grid 2x2 of 2x2 regions"):
        torch.ops.dge_explain.compress(torch.zeros(1, 20, 3), table.rows, table.region_start, table.region_k,
                                       table.offsets, 5, 4, 2, 0, True)
