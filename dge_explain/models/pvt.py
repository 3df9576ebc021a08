"""Pyramid Vision Transformer v1 (Wang et al., ICCV 2021), dense or with a DGE in
every block of every stage, with the parameter names of the original DGE
implementation.  Stage patch embeddings: conv 4x4/4 then 2x2/2 three times, each
followed by LayerNorm(eps 1e-5); spatial-reduction attention (r = 8, 4, 2, 1);
a cls token in stage 4 only.

Any input whose stage grids are multiples of the region size works (multiples of
32*S pixels), or, with ragged borders (``dge_explain.models.encoder.ragged_borders``),
any multiple of 32 as for the dense model; positional embeddings are resized
bilinearly.  ``forward_pyramid`` serves as a detection/segmentation backbone: it
pads other sizes to the next multiple (bottom/right, zeros) and crops the padding
off every output.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models import register_model
from torch import nn
from torch.nn.init import trunc_normal_

from .attention import SpatialReductionAttention, token_map
from .blocks import DenseBlock, DGEBlock
from .data_config import deit_eval_config
from .encoder import DynamicGrainedEncoder, split_sizes_for
from .gating import dge_modules
from .registration import TIMM_FACTORY_KWARGS

EMBED_DIMS = (64, 128, 320, 512)
NUM_HEADS = (1, 2, 5, 8)
MLP_RATIOS = (8, 8, 4, 4)
SR_RATIOS = (8, 4, 2, 1)
DEPTHS = {"tiny": (2, 2, 2, 2), "small": (3, 4, 6, 3), "medium": (3, 4, 18, 3),
          "large": (3, 8, 27, 3)}
STRIDES = (4, 8, 16, 32)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


def resize_pos_embed(pos: torch.Tensor, num_extra: int, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings [1, E + S*S, C] of a square S x S grid resampled bilinearly to
    `grid`, the E extra tokens' entries kept (other input sizes; older checkpoints)."""
    side = math.isqrt(pos.shape[1] - num_extra)
    spatial = pos[:, num_extra:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=tuple(grid), mode="bilinear", align_corners=False)
    return torch.cat([pos[:, :num_extra], spatial.flatten(2).transpose(1, 2)], 1)


class PyramidVisionTransformer(nn.Module):
    # tokens before the spatial ones in stage 4: the cls token
    num_extra = 1

    def __init__(self, img_size: int = 256, in_chans: int = 3, num_classes: int = 1000,
                 depths=DEPTHS["small"], embed_dims=EMBED_DIMS, num_heads=NUM_HEADS,
                 mlp_ratios=MLP_RATIOS, sr_ratios=SR_RATIOS, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 phi=None, init_gate: float = 0.95, sparse_train: bool = False,
                 drop_path_per_query: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.img_size = img_size
        self.phi = None if phi is None else tuple(phi)
        self.split_sizes, self.region_size = (None, 1) if phi is None else split_sizes_for(phi)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cursor = 0
        for stage in range(4):
            dim = embed_dims[stage]
            patches = (img_size // STRIDES[stage]) ** 2
            setattr(self, f"patch_embed{stage + 1}", PatchEmbed(
                4 if stage == 0 else 2, in_chans if stage == 0 else embed_dims[stage - 1], dim))
            setattr(self, f"pos_embed{stage + 1}",
                    nn.Parameter(torch.zeros(1, patches + (self.num_extra if stage == 3 else 0), dim)))
            blocks = []
            for _ in range(depths[stage]):
                parts = dict(
                    norm1=nn.LayerNorm(dim, eps=1e-6),
                    attn=self.make_attention(dim, num_heads[stage], sr_ratios[stage], qkv_bias,
                                             attn_drop_rate, drop_rate),
                    norm2=nn.LayerNorm(dim, eps=1e-6),
                    mlp=Mlp(dim, int(dim * mlp_ratios[stage]), drop=drop_rate),
                    drop_path1=DropPath(rates[cursor]) if rates[cursor] > 0 else None,
                    drop_path2=DropPath(rates[cursor]) if rates[cursor] > 0 else None)
                cursor += 1
                if phi is None:
                    blocks.append(DenseBlock(**parts))
                else:
                    dge = DynamicGrainedEncoder(dim, phi, init_gate, sparse_train)
                    blocks.append(DGEBlock(**parts, dge=dge, drop_path_per_query=drop_path_per_query))
            setattr(self, f"block{stage + 1}", nn.ModuleList(blocks))
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm = nn.LayerNorm(embed_dims[3], eps=1e-6)
        if self.num_extra:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[3]))
        self.head = nn.Linear(embed_dims[3], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def make_attention(self, dim: int, heads: int, sr_ratio: int, qkv_bias: bool, attn_drop: float,
                       proj_drop: float) -> nn.Module:
        """One block's attention (queries of the block's DGE, or every token)."""
        return SpatialReductionAttention(dim, heads, sr_ratio, qkv_bias, attn_drop, proj_drop)

    def init_weights(self) -> None:
        """As the original: trunc_normal(0.02) for embeddings and Linear layers,
        LayerNorm (1, 0), convs keep PyTorch's default; routers re-initialised."""
        for stage in range(4):
            trunc_normal_(getattr(self, f"pos_embed{stage + 1}"), std=0.02)
        if self.num_extra:
            trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for dge in dge_modules(self):
            dge.router.reset_parameters()


    def blocks(self):
        for stage in range(4):
            yield from getattr(self, f"block{stage + 1}")

    def _pos_embed(self, stage: int, grid: tuple[int, int]) -> torch.Tensor:
        pos = getattr(self, f"pos_embed{stage + 1}")
        extra = self.num_extra if stage == 3 else 0
        if grid[0] * grid[1] == pos.shape[1] - extra:
            return pos
        return resize_pos_embed(pos, extra, grid)

    def size_multiple(self) -> int:
        """What each input side must be a multiple of: the last stride, times the region
        size unless every DGE takes ragged borders (then the dense model's own)."""
        ragged = all(dge.ragged for dge in dge_modules(self))
        return STRIDES[3] * (1 if ragged else self.region_size)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The nearest valid input size at or above height x width (each side a multiple
        of size_multiple()): what forward_pyramid pads to."""
        multiple = self.size_multiple()
        return -(-height // multiple) * multiple, -(-width // multiple) * multiple

    def _check_size(self, images: torch.Tensor) -> None:
        height, width = images.shape[-2:]
        valid = self.padded_size(height, width)
        if (height, width) != valid:
            raise ValueError(
                f"input {height}x{width} gives stage grids that are not multiples of the region "
                f"size {self.region_size}: use sizes that are multiples of {self.size_multiple()} "
                f"(e.g. {valid[0]}x{valid[1]}), or forward_pyramid(..., pad=True)")

    def forward_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs: stages 1-3 as [B, C, H, W], stage 4 as tokens [B, E + HW, C]."""
        self._check_size(images)
        outputs, x = [], images
        for stage in range(4):
            tokens, grid = getattr(self, f"patch_embed{stage + 1}")(x)
            if stage == 3 and self.num_extra:
                tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1)
            tokens = self.pos_drop(tokens + self._pos_embed(stage, grid))
            for block in getattr(self, f"block{stage + 1}"):
                tokens = block(tokens, grid)
            if stage < 3:
                x = token_map(tokens, grid)
                outputs.append(x)
            else:
                outputs.append(tokens)
        return outputs

    def forward_pyramid(self, images: torch.Tensor, pad: bool = True) -> dict[str, torch.Tensor]:
        """Multi-scale features {res2..res5} (strides 4, 8, 16, 32) as [B, C, H, W];
        res5 excludes the cls token.  With pad=True an input of any size is padded
        to the next valid multiple and the padding is cropped from every map."""
        height, width = images.shape[-2:]
        if pad:
            padded = self.padded_size(height, width)
            images = F.pad(images, (0, padded[1] - width, 0, padded[0] - height))
        stages = self.forward_stages(images)
        grid = (images.shape[-2] // STRIDES[3], images.shape[-1] // STRIDES[3])
        res5 = token_map(stages[3][:, self.num_extra:], grid)
        maps = stages[:3] + [res5]
        return {f"res{i + 2}": m[..., :-(-height // STRIDES[i]), :-(-width // STRIDES[i])]
                for i, m in enumerate(maps)}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.forward_stages(images)[3])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor):
        if self.num_classes == 0:
            return self.forward_pyramid(images, pad=False)
        return self.forward_head(self.forward_features(images))


def register_pyramid(model_class, name: str, size: str, phi, title: str) -> None:
    """Registers `name` with timm: `model_class` at DEPTHS[size] with DGEs of `phi`
    (None: dense), and the 256 px evaluation data config."""
    def create(pretrained: bool = False, **kwargs):
        for key in TIMM_FACTORY_KWARGS:
            kwargs.pop(key, None)
        if pretrained:
            raise ValueError(f"no pretrained weights for {name} can be downloaded; load a "
                             "checkpoint with dge_explain.models.load_checkpoint")
        kwargs.setdefault("depths", DEPTHS[size])
        model = model_class(phi=phi, **kwargs)
        model.pretrained_cfg = deit_eval_config(name, model.img_size)
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = model_class.__module__
    create.__doc__ = f"{title}-{size.capitalize()} at 256px" + ("" if phi is None else f" with DGE (phi={phi})")
    register_model(create)


for _size in DEPTHS:
    register_pyramid(PyramidVisionTransformer, f"pvt_{_size}_256", _size, None, "PVT v1")
    register_pyramid(PyramidVisionTransformer, f"pvt_dge_s12_{_size}_256", _size, (1, 2), "PVT v1")
    register_pyramid(PyramidVisionTransformer, f"pvt_dge_s124_{_size}_256", _size, (1, 2, 4), "PVT v1")
