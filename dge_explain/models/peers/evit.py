"""EViT (Liang et al., ICLR 2022, "Not All Patches are What You Need: Expediting
Vision Transformers via Token Reorganizations"), training-free, written from the
paper.

At chosen blocks, between attention and MLP, the tokens are reorganised by the
class token's attention to them (its row of the block's attention, averaged over
heads): the top-k ("attentive") tokens are kept, k = ceil(keep rate x the
tokens other than the prefix), and the others are fused into one token, their
average weighted by that attention, appended after the kept ones.  A token fused
earlier competes as any other token at later blocks.  The paper's setting for
DeiT: blocks 4, 7 and 10 (1-based) at keep rate 0.7.

The weights of the fused token are normalised to sum 1 (a weighted average): the
paper trains with the fused token, and without training an unnormalised sum would
shrink it by the attention mass it gathers.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import TokenReduction, check_plain_vit, patch, split_qkv

PAPER_LAYERS = (4, 7, 10)        # of DeiT's 12 blocks


def paper_layers(depth: int) -> tuple[int, ...]:
    """The paper's blocks 4, 7, 10 of 12 at the same relative depths of a `depth`-block model."""
    return tuple(sorted({min(depth, max(1, round(layer * depth / 12))) for layer in PAPER_LAYERS}))


def kept_count(keep_rate: float, candidates: int) -> int:
    """ceil(keep_rate x candidates), immune to products such as 0.7 x 10 = 7.000000000000001."""
    return min(candidates, max(1, math.ceil(keep_rate * candidates - 1e-9)))


def fuse_inattentive(x: torch.Tensor, cls_attention: torch.Tensor, keep: int, prefix: int, track: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B, N, C] with the `keep` tokens the class token attends to most (cls_attention
    [B, N]) kept in their order and the rest fused into one token appended last; and,
    with `track`, the new position of every old token (None when every token is kept
    or without `track`)."""
    batch, tokens, channels = x.shape
    candidates = tokens - prefix
    if keep >= candidates:
        return x, None
    order = cls_attention[:, prefix:].argsort(dim=-1, descending=True, stable=True)
    kept, rest = order[:, :keep].sort(dim=-1).values, order[:, keep:]
    spatial = x[:, prefix:]
    weights = cls_attention[:, prefix:].gather(1, rest)
    fused = (spatial.gather(1, rest[..., None].expand(-1, -1, channels)) * weights[..., None]).sum(1) \
        / weights.sum(1, keepdim=True)
    x_new = torch.cat([x[:, :prefix], spatial.gather(1, kept[..., None].expand(-1, -1, channels)),
                       fused[:, None]], dim=1)
    if not track:
        return x_new, None
    moved = torch.full((batch, tokens), prefix + keep, dtype=torch.long, device=x.device)
    moved[:, :prefix] = torch.arange(prefix, device=x.device)
    moved.scatter_(1, kept + prefix, torch.arange(prefix, prefix + keep, device=x.device).expand(batch, -1))
    return x_new, moved


def class_attention(attn, qkv: torch.Tensor) -> torch.Tensor:
    """[B, N] the class token's attention row, averaged over heads (only that row is computed)."""
    q, k = split_qkv(attn, qkv)
    logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)         # [B, h, 1, N]
    return logits.softmax(dim=-1)[:, :, 0].mean(dim=1)


class EViT(TokenReduction):
    def __init__(self, depth: int, prefix: int, keep_rate: float, layers: Sequence[int] | None = None):
        super().__init__(depth, prefix)
        self.layers = paper_layers(depth) if layers is None else tuple(sorted({int(l) for l in layers}))
        if not 0 < keep_rate <= 1:
            raise ValueError(f"EViT's keep rate must be in (0, 1], got {keep_rate}")
        bad = [l for l in self.layers if not 1 <= l <= depth]
        if bad:
            raise ValueError(f"EViT layers {bad} out of range: the model has blocks 1..{depth}")
        self.keep_rate = float(keep_rate)
        self.fused: torch.Tensor | None = None       # [B, N] 1 where a token holds fused patches (traced)

    def tokens_after(self, index: int, tokens: int) -> int:
        if index + 1 not in self.layers:
            return tokens
        keep = kept_count(self.keep_rate, tokens - self.prefix)
        return tokens if keep == tokens - self.prefix else self.prefix + keep + 1

    def begin(self, x):
        super().begin(x)
        self.fused = x.new_zeros(x.shape[:2]) if self.trace_layers else None

    def reduce(self, index, x, qkv, attn):
        if qkv is None:
            return x, None
        keep = kept_count(self.keep_rate, x.shape[1] - self.prefix)
        x, moved = fuse_inattentive(x, class_attention(attn, qkv), keep, self.prefix, track=self.fused is not None)
        if self.fused is not None and moved is not None:
            # a token is fused once any patch it holds was: the appended one, or a kept earlier fusion
            self.fused = x.new_zeros(x.shape[:2]).scatter_reduce(1, moved, self.fused, "amax")
            self.fused[:, -1] = 1
        return x, moved

    def token_values(self, index):
        return 1 - self.fused


def apply_evit(model: nn.Module, keep_rate: float, layers: Sequence[int] | None = None,
               copy: bool = False) -> nn.Module:
    """EViT keeping `keep_rate` of the tokens at the 1-based blocks `layers` (default:
    the paper's 4, 7, 10 of 12, at the same relative depths) of a timm
    VisionTransformer: patched in place (or, with copy, a copy sharing the weights),
    returned; its forward returns logits as the dense model's."""
    check_plain_vit(model)
    return patch(model, EViT(len(model.blocks), model.num_prefix_tokens, keep_rate, layers), copy_model=copy)
