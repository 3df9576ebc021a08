"""The ViT/DeiT family (timm's VisionTransformer and models laid out like it:
``patch_embed``, ``blocks``, ``num_prefix_tokens``), dense or DGE."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..gating import dge_modules
from .base import BackboneAdapter, SizeRule


class ViTAdapter(BackboneAdapter):
    family = "vit"

    def matches(self, model: nn.Module) -> bool:
        return hasattr(model, "patch_embed") and isinstance(getattr(model, "blocks", None), nn.Sequential)

    def blocks(self, model):
        return list(model.blocks)

    def _stride(self, model) -> tuple[int, int]:
        return tuple(model.patch_embed.proj.stride)

    def block_inputs(self, model, image_hw):
        stride = self._stride(model)
        cells = (image_hw[0] // stride[0]) * (image_hw[1] // stride[1])
        return [(block, cells + model.num_prefix_tokens, cells) for block in model.blocks]

    def image_size(self, model, first_grid):
        stride = self._stride(model)
        return first_grid[0] * stride[0], first_grid[1] * stride[1]

    def last_tokens(self, model, image_hw):
        stride = self._stride(model)[0]
        return model.num_prefix_tokens, (image_hw[0] // stride, image_hw[1] // stride), stride

    def stem_macs(self, model, pixels, terms):
        proj = model.patch_embed.proj
        return pixels * proj.in_channels * proj.out_channels

    def size_rule(self, model):
        """timm's patch embedding takes whole patches (or pads to them, with
        dynamic_img_pad); the token grid must tile into DGE regions; without
        dynamic_img_size the positional embedding fixes the size."""
        patch = self._stride(model)[0]
        embed = model.patch_embed
        if not getattr(model, "dynamic_img_size", False):
            return SizeRule(patch, f"patch {patch}", fixed=tuple(embed.img_size))
        region = max((dge.region_size for dge in dge_modules(model)), default=1)
        why = f"region {region} x patch {patch}" if region > 1 else f"patch {patch}"
        return SizeRule(region * patch, why, padded_to=patch if getattr(embed, "dynamic_img_pad", False) else 1)

    def cam_layers(self, model):
        return list(model.blocks), [], self._stride(model)[0]

    def convert_checkpoint(self, state, model, report):
        """A square grid's absolute position embedding resampled (bicubic, timm's)
        to the model's grid."""
        from timm.layers import resample_abs_pos_embed

        target, source = getattr(model, "pos_embed", None), state.get("pos_embed")
        if not isinstance(target, torch.Tensor) or source is None or source.shape == target.shape:
            return
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
        old_side = math.isqrt(source.shape[1] - prefix)
        if old_side * old_side != source.shape[1] - prefix or source.shape[2] != target.shape[2]:
            return  # left to the shape check, which names it
        state["pos_embed"] = resample_abs_pos_embed(source, new_size=list(model.patch_embed.grid_size),
                                                    old_size=[old_side, old_side], num_prefix_tokens=prefix)
        report.converted.append(f"pos_embed {tuple(source.shape)} -> {tuple(target.shape)} (bicubic)")
