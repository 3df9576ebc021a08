"""The DGE forward paths agree: the dense multi-granularity training path equals
the sparse eval path for the same gates (float64), as does the sparse training
path; gradients reach every router logit; with every gate at the finest option
a DGE model equals its dense original."""
import pytest
import timm
import torch

from dge_explain.complexity import budget_loss, dge_complexity
from dge_explain.models import dge_modules, force_gates, from_dense, load_checkpoint, random_fraction, to_dense
from dge_explain.models.peers import check_plain_vit

from helpers import small_dpvt, small_pvt, small_vit


def _forward(model, images, training: bool, seed: int, sparse_train: bool = False):
    model.train(training)
    for dge in dge_modules(model):
        dge.sparse_train = sparse_train
    with force_gates(model, random_fraction(0.5, seed)):
        return model(images)


@pytest.mark.parametrize("build,phi,size", [
    (small_vit, (1, 2), 64), (small_vit, (1, 2, 4), 64), (small_vit, (1, 4), 64),
    (small_pvt, (1, 2), 128), (small_pvt, (1, 2, 4), 128), (small_dpvt, (1, 2), 128), (small_dpvt, (1, 2, 4), 128)])
def test_training_paths_equal_the_eval_path(build, phi, size, generator):
    torch.manual_seed(generator.initial_seed() % 2**31)
    model = build(phi=phi)
    images = torch.randn(3, 3, size, size, generator=generator, dtype=torch.float64)
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    sparse_eval = _forward(model, images, training=False, seed=seed)
    dense_train = _forward(model, images, training=True, seed=seed)
    sparse_train = _forward(model, images, training=True, seed=seed, sparse_train=True)
    assert (dense_train - sparse_eval).abs().max() <= 1e-10
    assert (sparse_train - sparse_eval).abs().max() <= 1e-10


def _keep_router_logits(model) -> list:
    """Every router output of the next forward, with its gradient retained."""
    logits = []

    def keep(module, args, out):
        out.retain_grad()
        logits.append(out)

    for dge in dge_modules(model):
        dge.router.register_forward_hook(keep)
    return logits


@pytest.mark.parametrize("build,size", [(small_vit, 64), (small_pvt, 128), (small_dpvt, 128)])
@pytest.mark.parametrize("sparse_train", [False, True])
def test_gradients_reach_every_router_logit(build, size, sparse_train, generator):
    torch.manual_seed(generator.initial_seed() % 2**31)
    model = build(phi=(1, 2, 4)).train()
    logits = _keep_router_logits(model)
    for dge in dge_modules(model):
        dge.sparse_train = sparse_train
    images = torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64)
    # Every token of the last block's output (a classifier reads only the cls
    # token, which no gate of the last block influences).
    features = model.forward_features(images) if build is small_vit else model.forward_stages(images)[-1]
    features.square().sum().backward()
    assert len(logits) == len(dge_modules(model))
    for out in logits:
        if sparse_train:  # only the chosen logit of each region gets a task gradient
            assert (out.grad.abs().amax(-1) > 0).all()
        else:
            assert (out.grad != 0).all()


def test_finest_gates_reproduce_the_dense_vit(generator):
    dense = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, patch_size=8,
                              depth=2).double().eval()
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    for phi in [(1, 2), (1, 2, 4)]:
        dge = from_dense(dense, phi=phi).eval()
        with torch.no_grad(), force_gates(dge, "finest"):
            torch.testing.assert_close(dge(images), dense(images), rtol=1e-10, atol=1e-10)
    assert type(dense).__name__ == "VisionTransformerDistilled", "from_dense must not modify its input"
    expected = dense(images)
    converted = from_dense(dense, phi=(1, 2), inplace=True)
    assert converted is dense and len(dge_modules(converted)) == 2, "inplace converts the model given"
    with torch.no_grad(), force_gates(converted, "finest"):
        torch.testing.assert_close(converted(images), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_to_dense_is_the_dge_vit_with_every_region_finest(name, generator):
    dense = timm.create_model(name, img_size=64, patch_size=8, depth=2, dynamic_img_size=True).double().eval()
    dge = from_dense(dense, phi=(1, 2, 4)).eval()
    for router in (d.router for d in dge_modules(dge)):   # routers that would not pick finest
        torch.nn.init.normal_(router.gate.weight, generator=generator)
    twin = to_dense(dge)
    assert type(twin) is type(dense) and not dge_modules(twin) and dge_modules(dge), "a copy; the DGE model kept"
    check_plain_vit(twin)
    assert twin.state_dict().keys() == dense.state_dict().keys()
    for key, value in dense.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value), key
    images = torch.randn(2, 3, 64, 32, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        expected = dense(images)
        torch.testing.assert_close(twin(images), expected, rtol=1e-10, atol=1e-10)
        with force_gates(dge, "finest"):
            torch.testing.assert_close(dge(images), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="is not a DGE ViT"):
        to_dense(dense)
    with pytest.raises(ValueError, match="is not a DGE ViT"):
        to_dense(small_pvt())


@pytest.mark.parametrize("build", [small_pvt, small_dpvt])
def test_finest_gates_reproduce_the_dense_pvt(build, generator):
    dense = build(phi=None).eval()
    dge = build(phi=(1, 2, 4)).eval()
    load_checkpoint(dge, dense.state_dict(), fresh_routers=True)
    images = torch.randn(2, 3, 128, 128, generator=generator, dtype=torch.float64)
    with torch.no_grad(), force_gates(dge, "finest"):
        torch.testing.assert_close(dge(images), dense(images), rtol=1e-10, atol=1e-10)


def test_router_initialisation_prefers_the_finest_option():
    model = small_vit(phi=(1, 2, 4), dtype=torch.float32)
    for dge in dge_modules(model):
        probabilities = torch.softmax(dge.router.gate.bias, 0)
        torch.testing.assert_close(probabilities[0], torch.tensor(0.95))
        assert dge.router.gate.weight.abs().max() <= 2.0 and dge.router.gate.weight.std() < 0.02
    assert torch.allclose(dge_modules(model)[0].router.gate.bias[0], torch.tensor(1.818793),
                          atol=1e-6)


@pytest.mark.parametrize("build,size", [(small_vit, 64), (small_pvt, 128), (small_dpvt, 128)])
def test_budget_loss_reaches_every_router_logit(build, size, generator):
    torch.manual_seed(generator.initial_seed() % 2**31)
    model = build(phi=(1, 2, 4)).train()
    logits = _keep_router_logits(model)
    model(torch.randn(2, 3, size, size, generator=generator, dtype=torch.float64))
    budget_loss(dge_complexity(model), gamma=0.3).backward()
    for out in logits:
        assert (out.grad != 0).all()
