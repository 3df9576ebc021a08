"""Random routers with mixed gates: every model output equals the same model run
on the pure-PyTorch reference ops (float64, so that no near-tied gate can flip)."""
import pytest
import timm
import torch

from dge_explain import ops
from dge_explain.models import dge_modules, from_dense

from conftest import requires_cuda
from helpers import randomise_routers, spread_offsets, used_options

DEIT = [(8, 224), (3, 256), (2, 384), (1, 512), (1, 1024)]
PVT = [(8, 256), (2, 384), (1, 512), (1, 1024)]


def _compare(model, images):
    with torch.no_grad():
        compiled = model(images)
        options = used_options(model)
        with ops.use_backend("reference"):
            reference = model(images)
    assert options == set(range(len(dge_modules(model)[0].split_sizes))), "gates are not mixed"
    torch.testing.assert_close(compiled, reference, rtol=1e-9, atol=1e-9)


def _deit(phi):
    dense = timm.create_model("deit_tiny_patch16_224", depth=4)
    return from_dense(dense, phi=phi).double().eval()


@pytest.mark.parametrize("batch,size", DEIT)
def test_deit(batch, size, generator):
    model = _deit((1, 2))
    randomise_routers(model, generator)
    _compare(model, torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("batch,size", [(4, 256), (1, 768)])
def test_deit_three_granularities(batch, size, generator):
    model = _deit((1, 2, 4))
    randomise_routers(model, generator)
    _compare(model, torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("batch,size", PVT)
def test_pvt(batch, size, generator):
    model = timm.create_model("pvt_dge_s124_tiny_256", depths=(1, 1, 1, 1)).double().eval()
    randomise_routers(model, generator)
    _compare(model, torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64))


def _dpvt(generator):
    model = timm.create_model("dpvt_dge_s124_tiny_256", depths=(1, 1, 1, 1)).double().eval()
    spread_offsets(model, generator)
    return model


@pytest.mark.parametrize("batch,size", [(3, 256), (1, 512)])
def test_dpvt(batch, size, generator):
    model = _dpvt(generator)
    randomise_routers(model, generator)
    _compare(model, torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64))


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype, generator):
    model = _deit((1, 2, 4)).to(dtype)
    randomise_routers(model, generator)
    model = model.to(dtype)
    images = torch.randn(4, 3, 512, 512, generator=generator, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        cpu = model(images)
        gpu = model.cuda()(images.cuda()).cpu()
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(gpu, cpu, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["deit", "pvt", "dpvt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_cuda_kernels_run_the_models_as_the_reference(family, dtype, generator):
    """DGE models (three granularities, mixed gates) with every op on the CUDA
    kernels, run through the CUDA emulation, against the reference ops in float64."""
    from emulation import emulated_cuda

    if family == "deit":
        model, size = _deit((1, 2, 4)), 128
    elif family == "pvt":
        model, size = timm.create_model("pvt_dge_s124_tiny_256", depths=(1, 1, 1, 1)).double().eval(), 256
    else:
        model, size = _dpvt(generator), 256
    randomise_routers(model, generator)
    images = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        with ops.use_backend("reference"):
            reference = model(images)
        with emulated_cuda():
            emulated = model.to(dtype)(images.to(dtype)).double()
    assert used_options(model) == set(range(len(dge_modules(model)[0].split_sizes))), "gates are not mixed"
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(emulated, reference, rtol=tol, atol=tol)
