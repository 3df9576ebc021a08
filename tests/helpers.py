"""Small model builders and utilities shared by the model tests."""
from __future__ import annotations

import contextlib

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dge_explain.models import DeformablePVT, PyramidVisionTransformer, dge_modules, force_gates, from_dense


def small_vit(phi=(1, 2), depth: int = 2, dim: int = 48, heads: int = 3, img_size: int = 64,
              patch: int = 8, dtype=torch.float64, **kwargs) -> nn.Module:
    kwargs.setdefault("num_classes", 10)
    dense = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth,
                              num_heads=heads, qkv_bias=True, **kwargs)
    return from_dense(dense, phi=phi).to(dtype)


def small_pvt(phi=(1, 2), depths=(1, 1, 1, 1), dims=(16, 32, 40, 48), dtype=torch.float64,
              model_class=PyramidVisionTransformer, **kwargs) -> PyramidVisionTransformer:
    kwargs.setdefault("num_classes", 10)
    return model_class(img_size=64, depths=depths, embed_dims=dims, num_heads=(1, 2, 2, 3), phi=phi,
                       **kwargs).to(dtype)


def small_dpvt(phi=(1, 2), depths=(1, 1, 1, 1), dtype=torch.float64, **kwargs) -> DeformablePVT:
    """A small DPVT whose sampling offsets reach a few pixels out (the model's own
    initialisation leaves them ~0: every point on its reference)."""
    model = small_pvt(phi, depths, dtype=dtype, model_class=DeformablePVT, **kwargs)
    spread_offsets(model, torch.Generator().manual_seed(7))
    return model


def spread_offsets(model: nn.Module, generator: torch.Generator, pixels: float = 2.0) -> None:
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "attn_weight"):
                bias = module.offsets.bias
                bias.copy_(torch.randn(bias.shape, generator=generator, dtype=torch.float64) * pixels)
                weight = module.offsets.weight
                weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float64) * 0.1)


def randomise_routers(model: nn.Module, generator: torch.Generator, std: float = 2.0) -> None:
    """Router weights large enough (bias 0) that the gates mix all options."""
    with torch.no_grad():
        for dge in dge_modules(model):
            weight = dge.router.gate.weight
            weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float64) * std)
            dge.router.gate.bias.zero_()


def mixed_routing(logits: torch.Tensor) -> torch.Tensor:
    """A force_gates policy: region i takes option i mod K, the same for every image
    (so no block's routing is uniform and no fast path is taken)."""
    regions = torch.arange(logits.shape[1] * logits.shape[2]).view(logits.shape[1:3]) % logits.shape[-1]
    return regions.expand(logits.shape[:-1]).contiguous()


def fast_and_sparse(model: nn.Module, images: torch.Tensor, policy) -> list[torch.Tensor]:
    """(fast paths on, off) outputs of the eval forward under the gate policy."""
    outputs = []
    for fast in (True, False):
        for dge in dge_modules(model):
            dge.fast_paths = fast
        with torch.no_grad(), force_gates(model, policy):
            outputs.append(model(images))
    return outputs


def used_options(model: nn.Module) -> set[int]:
    """Gate indices chosen anywhere in the last forward."""
    return {int(i) for dge in dge_modules(model) for i in dge.routing.gates.argmax(-1).unique()}


@contextlib.contextmanager
def counting_calls(module: nn.Module):
    """Inside the block, the list gains an entry per forward call of `module`."""
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()
