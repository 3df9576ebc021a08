"""MAC accounting: the original implementation's numbers to the MAC (method
notes §1.8 table), corrected figures cross-checked against a FLOP counter, and
a budget loss that is differentiable through the gates."""
import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dge_explain.complexity import block_macs, budget_loss, dense_macs, dge_complexity
from dge_explain.models import dge_modules, force_gates, from_dense, random_fraction
from dge_explain.models.families import adapter_for

from helpers import small_vit

# model: (static, all coarsest, all k=2) in GMac at 256, original accounting (§1.8)
ORIGINAL = {
    "deit_dge_s124_tiny_patch16_256": (1.680, 0.325, 0.596),
    "deit_dge_s124_small_patch16_256": (6.089, 1.256, 2.222),
    "deit_dge_s124_base_patch16_256": (23.091, 4.932, 8.564),
    "pvt_dge_s124_tiny_256": (2.372, 0.363, 0.765),
    "pvt_dge_s124_small_256": (4.810, 0.751, 1.563),
    "pvt_dge_s124_medium_256": (8.500, 1.426, 2.841),
    "pvt_dge_s124_large_256": (12.592, 2.087, 4.188),
}


def _gmacs(model, policy, accounting):
    with torch.no_grad(), force_gates(model, policy):
        model(torch.zeros(1, 3, 256, 256))
    result = dge_complexity(model, accounting)
    return round(float(result.static) / 1e9, 3), round(float(result.dynamic) / 1e9, 3)


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_original_accounting_reproduces_the_published_table(name):
    model = timm.create_model(name).eval()
    static, coarsest = _gmacs(model, "coarsest", "original")
    _, half = _gmacs(model, lambda logits: torch.ones(logits.shape[:-1], dtype=torch.long), "original")
    assert (static, coarsest, half) == ORIGINAL[name]


def test_corrected_constant_matches_the_notes():
    # The README's "static, corrected" column (for DeiT only the patch-embedding constant changes).
    for name, static in [("deit_dge_s124_tiny_patch16_256", 1.718), ("deit_dge_s124_small_patch16_256", 6.164),
                         ("deit_dge_s124_base_patch16_256", 23.243), ("pvt_dge_s124_tiny_256", 2.567),
                         ("pvt_dge_s124_small_256", 5.063), ("pvt_dge_s124_medium_256", 8.817),
                         ("pvt_dge_s124_large_256", 12.990)]:
        assert _gmacs(timm.create_model(name).eval(), "finest", "corrected")[0] == static
    for name, macs in [("deit_tiny_patch16_224", 1.261), ("deit_small_patch16_224", 4.613),
                       ("deit_base_patch16_224", 17.591)]:
        assert round(dense_macs(timm.create_model(name), (224, 224)) / 1e9, 3) == macs


@pytest.mark.parametrize("name,size", [("deit_small_patch16_224", 224), ("deit_tiny_patch16_224", 384),
                                       ("pvt_small_256", 256), ("pvt_tiny_256", 512),
                                       ("dpvt_small_256", 256), ("dpvt_tiny_256", 512)])
def test_matmul_macs_equal_a_flop_counter(name, size):
    model = timm.create_model(name, img_size=size) if name.startswith("deit") else timm.create_model(name)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    assert counter.get_total_flops() == 2 * dense_macs(model, (size, size), terms="matmul")
    assert dense_macs(model, (size, size)) > dense_macs(model, (size, size), terms="matmul")


@pytest.mark.parametrize("name", ["dpvt_dge_s124_tiny_256", "dpvt_dge_s12_small_256"])
def test_dynamic_matmul_macs_equal_a_flop_counter(name):
    """DPVT-DGE with mixed forced gates: the counter's FLOPs are twice the matrix
    products of the queries the gates kept (blocks), the stem, the head and the
    router gates.  (All of DPVT's matrix products are aten ops the counter sees;
    the DeiT/PVT DGEs' varlen attention is a custom op it does not.)"""
    model = timm.create_model(name).eval()
    with torch.no_grad(), force_gates(model, random_fraction(0.4, seed=3)), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 256, 256))
    adapter = adapter_for(model)
    macs = adapter.stem_macs(model, 256 * 256, "matmul") + model.head.in_features * model.head.out_features
    for block in adapter.blocks(model):
        routing = block.dge.routing
        n_q = float(routing.queries())
        macs += block_macs(adapter, block, routing.tokens, n_q, terms="matmul")
        macs += routing.gates[0, ..., 0].numel() * block.dge.router.gate.in_features * block.dge.router.gate.out_features
    assert counter.get_total_flops() == 2 * macs
    coarse = [float(b.dge.routing.queries()) < b.dge.routing.tokens for b in adapter_for(model).blocks(model)]
    assert all(coarse), "the forced gates must drop queries in every block"


def test_static_equals_dense_plus_routers():
    dense = timm.create_model("deit_small_patch16_224", img_size=256)
    dge = from_dense(dense, phi=(1, 2, 4)).eval()
    static, dynamic = _gmacs(dge, "finest", "original")
    assert static == dynamic
    routers = 12 * (257 / 16 * 384 * 4)
    assert dge_complexity(dge, "original").static.item() == pytest.approx(
        dense_macs(dense, (256, 256), "original") + routers)


def test_budget_loss_is_differentiable_through_the_gates(generator):
    model = small_vit(phi=(1, 2)).train()
    model(torch.randn(4, 3, 64, 64, generator=generator, dtype=torch.float64))
    result = dge_complexity(model)
    assert result.dynamic.requires_grad and not result.static.requires_grad
    loss = budget_loss(result, gamma=0.5, weight=2.0)
    expected = 2.0 * (result.dynamic.mean() / result.static.mean() - 0.5) ** 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(dge.router.gate.bias.grad is not None and dge.router.gate.bias.grad.abs().sum() > 0
               for dge in dge_modules(model))
    assert len(result.fine_fraction) == 2 and all(f.shape == (4,) for f in result.fine_fraction)


def test_complexity_needs_a_forward_first():
    with pytest.raises(ValueError, match="run a forward pass"):
        dge_complexity(small_vit())
    with pytest.raises(ValueError, match="accounting must be one of"):
        dense_macs(timm.create_model("deit_tiny_patch16_224", depth=1), (224, 224), "exact")
