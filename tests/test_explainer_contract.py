"""The explainer contract, for every registered method on every model family: the
maps are named as the explainer says, [B, H, W] at the input size, finite, and the
same however the images are batched; a method that cannot explain a model refuses
with a ValueError that says why (and only where the model gives a reason)."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from dge_explain.explainers import Explainer, batch_maps, build_explainers
from dge_explain.methods import registry
from dge_explain.models import dge_modules
from dge_explain.models.families import adapter_for

from helpers import randomise_routers, small_dpvt, small_pvt, small_vit


def dense_deit():
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=3, qkv_bias=True,
                             num_classes=10).double()


MODELS = {"dense DeiT": (dense_deit, 64), "DGE-DeiT": (small_vit, 64),
          "PVT-DGE": (lambda: small_pvt(depths=(1, 1, 1, 2)), 64),
          "DPVT-DGE": (lambda: small_dpvt(depths=(1, 1, 1, 2)), 64)}


def expected_refusal(method: str, model) -> str | None:
    """The reason a model gives for refusing a method, or None when it must explain."""
    adapter = adapter_for(model)
    if registry()[method].module == "token_reduction" and adapter.family != "vit":
        return "runs on plain token ViTs only"   # a DGE ViT's maps come from its dense twin
    if registry()[method].passes == "rides" and not dge_modules(model):
        return "has no DGE routers"
    if registry()[method].passes == "attention":
        if adapter.attention_refusal is not None:
            return "reads attention probabilities over tokens"
        if method in ("rollout", "relevance") and adapter.token_attention_refusal is not None:
            return "multiplies token-to-token attention across blocks"
    return None


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    build, size = MODELS[request.param]
    model = build().eval()
    randomise_routers(model, torch.Generator().manual_seed(1))
    model.input_side = size
    return model


@pytest.mark.parametrize("method", list(registry()))
def test_every_method_meets_the_contract_or_refuses_with_its_reason(method, model, generator):
    reason = expected_refusal(method, model)
    if reason is not None:
        with pytest.raises(ValueError, match=reason):
            build_explainers(model, [method])
        return
    explainers = build_explainers(model, [method])
    assert explainers and all(isinstance(e, Explainer) for e in explainers)
    names = [n for e in explainers for n in e.names()]
    assert set(names) == {n for e in explainers for n in e.describe()}
    side = model.input_side
    images = torch.randn(3, 3, side, side, generator=generator, dtype=torch.float64)
    keys = ["a", "b", "c"]
    together = batch_maps(explainers, images, keys)
    assert sorted(together) == sorted(names)
    for name, maps in together.items():
        assert maps.shape == (3, side, side), name
        assert torch.isfinite(maps).all(), name
    split = [batch_maps(explainers, images[i:i + 1], keys[i:i + 1]) for i in range(3)]
    for name, maps in together.items():
        alone = torch.cat([part[name] for part in split]).to(maps.dtype)
        scale = maps.abs().max().clamp(min=1e-12)
        assert ((maps - alone).abs().max() / scale) < 1e-5, f"{name} depends on how the batch is split"
