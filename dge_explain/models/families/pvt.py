"""The PVT v1 family (dge_explain.models.pvt), dense or DGE: four stages of
strides 4-32, spatially reduced keys in stages 1-3, a cls token in stage 4
(``model.num_extra``, which pyramid variants without it set to 0)."""
from __future__ import annotations

import math

import torch

from ..pvt import STRIDES, PyramidVisionTransformer, resize_pos_embed
from .base import BackboneAdapter, SizeRule

STAGES = range(4)


class PVTAdapter(BackboneAdapter):
    family = "pvt"
    token_attention_refusal = (
        "PVT's stages 1-3 attend to spatially reduced keys and its patch embeddings change the token set "
        "between stages, so it is not defined for PVT (attention and attention-gradcam, on the last block, are)")

    def matches(self, model):
        return isinstance(model, PyramidVisionTransformer)

    def blocks(self, model):
        return list(model.blocks())

    def block_inputs(self, model, image_hw):
        rows = []
        for stage in STAGES:
            cells = (image_hw[0] // STRIDES[stage]) * (image_hw[1] // STRIDES[stage])
            extra = model.num_extra if stage == 3 else 0
            rows += [(block, cells + extra, cells) for block in getattr(model, f"block{stage + 1}")]
        return rows

    def image_size(self, model, first_grid):
        return first_grid[0] * STRIDES[0], first_grid[1] * STRIDES[0]

    def last_tokens(self, model, image_hw):
        return model.num_extra, (image_hw[0] // STRIDES[3], image_hw[1] // STRIDES[3]), STRIDES[3]

    def stem_macs(self, model, pixels, terms):
        """The four patch embeddings; each adds Nin/p^2 Cout for its LayerNorm (not a matmul)."""
        total = 0.0
        for stage in STAGES:
            proj = getattr(model, f"patch_embed{stage + 1}").proj
            patch = proj.stride[0]
            n_in = pixels / (STRIDES[stage] // patch) ** 2   # pixels of the stage's input map
            total += n_in * proj.in_channels * proj.out_channels
            if terms == "all":
                total += n_in / patch ** 2 * proj.out_channels
        return total

    def attention_macs(self, attn, dim, n_in, n_q, original):
        """Spatial reduction r: keys Nin/r^2; kv 2 Nin/r^2 C^2, plus the r x r conv
        Nin C^2 and its norm Nin/r^2 C where r > 1; the original counts one of the
        two attention matmuls."""
        r = attn.sr_ratio
        keys = n_in / r ** 2
        matmul = 2 * n_q * dim * dim + 2 * keys * dim * dim + (1 if original else 2) * n_q * keys * dim
        other = 3 * n_q * keys * attn.num_heads
        if r > 1:
            matmul = matmul + n_in * dim * dim
            other = other + keys * dim
        return matmul, other

    def size_rule(self, model):
        """Every stage's grid must tile into regions; positional embeddings are resampled."""
        region, stride = model.region_size, STRIDES[3]
        return SizeRule(region * stride, f"region {region} x stride {stride}" if region > 1 else f"stride {stride}")

    def cam_layers(self, model):
        earlier = [block for stage in (model.block1, model.block2, model.block3) for block in stage]
        return list(model.block4), earlier, STRIDES[3]

    def convert_checkpoint(self, state, model, report):
        """Each stage's square position embedding resized (bilinear) to the model's."""
        for stage in range(1, 5):
            key = f"pos_embed{stage}"
            target, source = getattr(model, key, None), state.get(key)
            if not isinstance(target, torch.Tensor) or source is None or source.shape == target.shape:
                continue
            extra = model.num_extra if stage == 4 else 0
            old, new = math.isqrt(source.shape[1] - extra), math.isqrt(target.shape[1] - extra)
            if old * old != source.shape[1] - extra or new * new != target.shape[1] - extra:
                continue
            state[key] = resize_pos_embed(source, extra, (new, new))
            report.converted.append(f"{key} {tuple(source.shape)} -> {tuple(target.shape)} (bilinear)")
