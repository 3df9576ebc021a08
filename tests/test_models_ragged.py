"""Ragged borders: with ragged_borders(model) a DGE model runs token grids that are
not multiples of its region size (the last regions cut short by the border), so
that it takes its dense original's padding; what it computes equals the same
model on the pure-PyTorch reference ops (float64, mixed gates), its fast paths
equal its sparse path, and grids that are multiples give exactly what they gave
without ragged borders."""
import pytest
import torch

from dge_explain import ops
from dge_explain.complexity import dge_complexity
from dge_explain.models import dge_modules
from dge_explain.models.encoder import ragged_borders

from helpers import fast_and_sparse, randomise_routers, small_dpvt, small_pvt, small_vit, used_options


def _mixed(model, generator):
    randomise_routers(model, generator)
    ragged_borders(model)
    return model.eval()


@pytest.mark.parametrize("phi", [(1, 2), (1, 2, 4)])
@pytest.mark.parametrize("size", [(72, 56), (40, 88), (8, 24)])
def test_deit_at_odd_grids_equals_the_reference_ops(phi, size, generator):
    model = _mixed(small_vit(phi=phi), generator)
    images = torch.randn(3, 3, *size, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        compiled = model(images)
        grid = dge_modules(model)[0].routing.grid
        with ops.use_backend("reference"):
            reference = model(images)
    assert grid == (size[0] // 8, size[1] // 8)
    torch.testing.assert_close(compiled, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("build", [small_pvt, small_dpvt])
@pytest.mark.parametrize("phi", [(1, 2), (1, 2, 4)])
def test_pyramids_pad_to_the_dense_stride_and_equal_the_reference_ops(build, phi, generator):
    model = _mixed(build(phi=phi, num_classes=0), generator)
    assert model.padded_size(100, 140) == (128, 160)     # the dense model's multiple of 32
    images = torch.randn(2, 3, 100, 140, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        compiled = model.forward_pyramid(images)
        grids = [dge.routing.grid for dge in dge_modules(model)]
        with ops.use_backend("reference"):
            reference = model.forward_pyramid(images)
    assert grids == [(32, 40), (16, 20), (8, 10), (4, 5)]   # 4 x 5 (and 8 x 10 for S = 4) is ragged
    assert used_options(model) == set(range(len(phi)))
    for key in compiled:
        torch.testing.assert_close(compiled[key], reference[key], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("build,size", [(small_vit, (64, 128)), (small_pvt, (128, 256)), (small_dpvt, (256, 128))])
def test_grids_that_are_multiples_run_exactly_as_before(build, size, generator):
    model = build(phi=(1, 2, 4)).eval()
    randomise_routers(model, generator)
    images = torch.randn(2, 3, *size, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        before = model(images)
        ragged_borders(model)
        after = model(images)
    assert torch.equal(before, after)


@pytest.mark.parametrize("family", ["deit", "pvt", "dpvt"])
def test_fast_paths_at_ragged_borders_equal_the_sparse_path(family, generator):
    build, size = {"deit": (small_vit, (72, 56)), "pvt": (small_pvt, (96, 160)),
                   "dpvt": (small_dpvt, (96, 160))}[family]
    model = _mixed(build(phi=(1, 2, 4)), generator)
    images = torch.randn(2, 3, *size, generator=generator, dtype=torch.float64)
    for option in range(3):
        def every_region(logits, option=option):
            return torch.full(logits.shape[:-1], option, dtype=torch.long)

        outputs = fast_and_sparse(model, images, every_region)
        assert (outputs[0] - outputs[1]).abs().max() <= 1e-12, option


def test_the_complexity_counts_the_rows_a_ragged_table_has(generator):
    model = _mixed(small_vit(phi=(1, 2, 4)), generator)
    with torch.no_grad():
        model(torch.randn(2, 3, 72, 56, generator=generator, dtype=torch.float64))
    for dge in dge_modules(model):
        routing = dge.routing
        table = ops.route_to_patches(routing.choice, dge.split_sizes, dge.region_size, routing.num_extra,
                                     routing.grid)
        assert routing.queries().tolist() == table.lengths.double().tolist()
    assert 0 < float(dge_complexity(model).ratio) < 1


def test_ragged_grids_are_refused_unless_asked_for_and_in_multigrain_training(generator):
    model = small_vit(phi=(1, 2)).eval()
    images = torch.randn(1, 3, 72, 64, generator=generator, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"token grid 9x8 is not divisible by region size 2.*10x8"):
        model(images)
    ragged_borders(model)
    model.train()
    with pytest.raises(ValueError, match=r"token grid 9x8 is not divisible by region size 2: the "
                                         r"multi-granularity training path needs whole regions"):
        model(images)
    for dge in dge_modules(model):
        dge.sparse_train = True
    assert model(images).shape == (1, 10)


@pytest.mark.cuda
@pytest.mark.parametrize("build,size", [(small_vit, (72, 40)), (small_pvt, (96, 160))])
def test_emulated_cuda_kernels_at_ragged_borders_equal_the_reference_ops(build, size, generator):
    """The CUDA routing, compress and restore kernels (run through the CUDA
    emulation) on ragged grids, mixed gates, against the reference ops."""
    from emulation import emulated_cuda

    model = _mixed(build(phi=(1, 2, 4)), generator)
    images = torch.randn(2, 3, *size, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        with ops.use_backend("reference"):
            reference = model(images)
        with emulated_cuda():
            emulated = model(images)
    assert used_options(model) == {0, 1, 2}
    assert any(dge.routing.grid[0] % 4 or dge.routing.grid[1] % 4 for dge in dge_modules(model))
    torch.testing.assert_close(emulated, reference, rtol=1e-9, atol=1e-9)
