"""DeiT/ViT with dynamic grained encoders, built from any timm VisionTransformer
(distilled DeiT included): every block becomes a DGEBlock with the block's own
weights (fused qkv split into q and kv) and a fresh router.

The converted model takes any image whose token grid is a multiple of the region
size S (positional embeddings are resampled as timm does for dynamic sizes);
other sizes are refused with an error naming the nearest valid one.
"""
from __future__ import annotations

import copy

import timm
import torch
from timm.layers import Format
from timm.models import register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from .attention import ViTAttention
from .blocks import DGEBlock
from .data_config import deit_eval_config
from .encoder import DynamicGrainedEncoder
from .registration import TIMM_FACTORY_KWARGS


class _DGEForward:
    """forward_features for a timm ViT whose blocks are DGE blocks: the token
    grid of the (dynamic-size) patch embedding is passed to every block."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ValueError("DGE blocks take no attention mask")
        x = self.patch_embed(x)  # NHWC
        grid = (x.shape[1], x.shape[2])
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x)



class DGEVisionTransformer(_DGEForward, VisionTransformer):
    """timm VisionTransformer with DGE blocks (made by from_dense)."""


class DGEVisionTransformerDistilled(_DGEForward, VisionTransformerDistilled):
    """timm's distilled DeiT with DGE blocks (cls and dist tokens are extra tokens)."""


_DGE_CLASSES = {VisionTransformer: DGEVisionTransformer,
                VisionTransformerDistilled: DGEVisionTransformerDistilled}


def _convert_attention(attn: Attention, index: int) -> ViTAttention:
    if type(attn) is not Attention:
        raise ValueError(f"blocks.{index}.attn is a {type(attn).__name__}; only timm's Attention "
                         "(fused qkv) can be converted")
    dim = attn.qkv.in_features
    if attn.attn_dim != dim or attn.proj.out_features != dim:
        raise ValueError(f"blocks.{index}.attn has attention dim {attn.attn_dim} != embed dim {dim}")
    converted = ViTAttention(
        dim, attn.num_heads, qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None, attn_drop=attn.attn_drop.p,
        proj_drop=attn.proj_drop.p, q_norm=attn.q_norm, k_norm=attn.k_norm, norm=attn.norm,
        gate=attn.gate)
    converted.to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
    with torch.no_grad():
        converted.q.weight.copy_(attn.qkv.weight[:dim])
        converted.kv.weight.copy_(attn.qkv.weight[dim:])
        if attn.qkv.bias is not None:
            converted.q.bias.copy_(attn.qkv.bias[:dim])
            converted.kv.bias.copy_(attn.qkv.bias[dim:])
        converted.proj.load_state_dict(attn.proj.state_dict())
    return converted


def _convert_block(block: nn.Module, index: int, phi, init_gate: float, sparse_train: bool,
                   drop_path_per_query: bool) -> DGEBlock:
    if type(block) is not Block:
        raise ValueError(f"blocks.{index} is a {type(block).__name__}; only timm's pre-norm Block "
                         "can carry a DGE")
    dim = block.norm1.normalized_shape[0]
    dge = DynamicGrainedEncoder(dim, phi, init_gate=init_gate, sparse_train=sparse_train)
    dge.to(device=block.norm1.weight.device, dtype=block.norm1.weight.dtype)
    return DGEBlock(block.norm1, _convert_attention(block.attn, index), block.norm2, block.mlp, dge,
                    ls1=block.ls1, ls2=block.ls2, drop_path1=block.drop_path1,
                    drop_path2=block.drop_path2, drop_path_per_query=drop_path_per_query)


def from_dense(model_or_name, phi=(1, 2), weights=None, init_gate: float = 0.95,
               sparse_train: bool = False, drop_path_per_query: bool = True,
               inplace: bool = False, **create_kwargs):
    """The DGE version of a timm ViT/DeiT: every weight kept, routers fresh
    (initialised to pick the finest option with probability init_gate).

    model_or_name: a timm VisionTransformer (copied, unless inplace=True converts
    it in place, saving the copy's time and memory) or a timm model name (created
    with ``create_kwargs``); weights: optional dense checkpoint (safetensors or a
    torch file), loaded strictly into the dense model first; phi: candidate
    granularities in tokens, e.g. (1, 2) or (1, 2, 4).
    """
    from .checkpoint import load_checkpoint

    if isinstance(model_or_name, str):
        dense = timm.create_model(model_or_name, pretrained=False, **create_kwargs)
    else:
        if create_kwargs:
            raise ValueError(f"create_kwargs {sorted(create_kwargs)} only apply to a model name")
        dense = model_or_name if inplace else copy.deepcopy(model_or_name)
    target = _DGE_CLASSES.get(type(dense))
    if target is None:
        raise ValueError(f"{type(dense).__name__} is not a timm VisionTransformer; supported: "
                         f"{', '.join(c.__name__ for c in _DGE_CLASSES)}")
    if weights is not None:
        load_checkpoint(dense, weights)
    if not isinstance(dense.patch_drop, nn.Identity):
        raise ValueError("patch dropout removes tokens from the grid; build the model with "
                         "patch_drop_rate=0")
    for index, block in enumerate(dense.blocks):
        dense.blocks[index] = _convert_block(block, index, phi, init_gate, sparse_train,
                                             drop_path_per_query)
    # Dynamic image size: the grid comes from each input, positional embeddings
    # are resampled when it differs from the native one.
    dense.patch_embed.strict_img_size = False
    dense.patch_embed.flatten = False
    dense.patch_embed.output_fmt = Format.NHWC
    dense.dynamic_img_size = True
    dense.__class__ = target
    return dense


def _dense_attention(attn: ViTAttention) -> Attention:
    """timm's Attention with the q and kv projections fused back into qkv."""
    dim = attn.q.in_features
    dense = Attention(dim, attn.num_heads, qkv_bias=attn.q.bias is not None,
                      proj_bias=attn.proj.bias is not None, attn_drop=attn.attn_drop.p,
                      proj_drop=attn.proj_drop.p)
    dense.q_norm, dense.k_norm, dense.norm, dense.gate, dense.proj = (attn.q_norm, attn.k_norm, attn.norm,
                                                                      attn.gate, attn.proj)
    weight, bias = attn._concatenated()
    dense.qkv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        dense.qkv.weight.copy_(weight)
        if bias is not None:
            dense.qkv.bias.copy_(bias)
    return dense


def _dense_block(block: DGEBlock) -> Block:
    """timm's Block around the DGE block's own modules (its router dropped)."""
    dense = Block.__new__(Block)
    nn.Module.__init__(dense)
    dense.norm1, dense.attn, dense.ls1, dense.drop_path1 = (block.norm1, _dense_attention(block.attn),
                                                            block.ls1, block.drop_path1)
    dense.norm2, dense.mlp, dense.ls2, dense.drop_path2 = block.norm2, block.mlp, block.ls2, block.drop_path2
    return dense


def is_dge_vit(model: nn.Module) -> bool:
    """A ViT/DeiT made by from_dense (or a registered deit_dge_* model)."""
    return type(model) in _DGE_CLASSES.values()


def to_dense(model: nn.Module) -> VisionTransformer:
    """The dense timm ViT a DGE ViT computes when every region is finest: a copy with
    timm's blocks (qkv fused again) and no routers, for what runs on plain ViTs
    only (ToMe and EViT).  The inverse of from_dense, routers aside."""
    if not is_dge_vit(model):
        raise ValueError(f"{type(model).__name__} is not a DGE ViT made by from_dense; supported: "
                         f"{', '.join(c.__name__ for c in _DGE_CLASSES.values())}")
    dense = copy.deepcopy(model)
    for index, block in enumerate(dense.blocks):
        dense.blocks[index] = _dense_block(block)
    dense.__class__ = {dge: plain for plain, dge in _DGE_CLASSES.items()}[type(model)]
    return dense


_DEIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
_PHIS = {"s12": (1, 2), "s124": (1, 2, 4)}


def _deit_dge(size: str, phi_name: str, img_size: int, pretrained: bool = False, **kwargs):
    for key in TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError("no pretrained DGE weights can be downloaded; build with "
                         "dge_explain.models.from_dense(..., weights=path) or load a checkpoint")
    embed_dim, heads = _DEIT_SIZES[size]
    phi_kwargs = {key: kwargs.pop(key) for key in ("init_gate", "sparse_train",
                                                   "drop_path_per_query") if key in kwargs}
    config = dict(img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=12, num_heads=heads,
                  mlp_ratio=4, qkv_bias=True)
    dense = VisionTransformer(**{**config, **kwargs})
    dense.pretrained_cfg = deit_eval_config(f"deit_dge_{phi_name}_{size}_patch16_{img_size}",
                                            dense.patch_embed.img_size[0])
    return from_dense(dense, phi=_PHIS[phi_name], inplace=True, **phi_kwargs)


def _register_deit(size: str, phi_name: str, img_size: int) -> None:
    name = f"deit_dge_{phi_name}_{size}_patch16_{img_size}"

    def entrypoint(pretrained: bool = False, **kwargs):
        return _deit_dge(size, phi_name, img_size, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (f"DeiT-{size.capitalize()}/16 at {img_size}px with a DGE "
                          f"(phi={_PHIS[phi_name]}) in every block.")
    globals()[name] = register_model(entrypoint)


for _size in _DEIT_SIZES:
    for _phi, _resolutions in (("s12", (224, 256)), ("s124", (256,))):
        for _res in _resolutions:
            _register_deit(_size, _phi, _res)
