"""ToMe, token merging (Bolya et al., ICLR 2023, "Token Merging: Your ViT But
Faster"), training-free, written from the paper.

In every block, between attention and MLP, r tokens are merged by bipartite soft
matching on the attention keys averaged over heads: the tokens are split
alternately into sets A and B (by position, the class token at position 0 in A),
each A token is joined to its most similar B token (cosine similarity of the
keys), and the r A tokens with the most similar partners are merged into them,
as averages weighted by the number of patches each token already stands for (its
size).  Prefix tokens (class, distillation) never merge.  The sizes are carried
from block to block, and proportional attention adds log(size) to every key's
attention logit, so that a merged token draws the attention its patches would.
The unmerged A tokens keep their order, followed by the B tokens: the class token
stays first.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import TokenReduction, check_plain_vit, patch, split_qkv


def _starts(prefix: int) -> tuple[int, int]:
    """First positions of set A (even) and set B (odd) after the prefix tokens: each
    set is every second position from there on (strided views, no index copies)."""
    return prefix + prefix % 2, prefix + 1 - prefix % 2


def _sides(tokens: int, prefix: int) -> tuple[range, range]:
    """Positions of set A and set B."""
    a, b = _starts(prefix)
    return range(a, tokens, 2), range(b, tokens, 2)


def mergeable(tokens: int, prefix: int) -> int:
    """The most tokens one block can merge: each merge takes an A token into a B token."""
    return min(len(side) for side in _sides(tokens, prefix))


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor | None, r: int, prefix: int,
                    track: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x [B, N, C] with r tokens merged by bipartite soft matching on metric [B, N, d],
    the sizes [B, N] (None: every token one patch) and, with `track`, the new
    position of every old token ([B, N]; None when r is 0 or without `track`)."""
    batch, tokens, channels = x.shape
    size = x.new_ones(batch, tokens) if size is None else size
    r = min(r, mergeable(tokens, prefix))
    if r <= 0:
        return x, size, None
    a, b = _starts(prefix)
    unit = metric / metric.norm(dim=-1, keepdim=True)
    similarity = unit[:, a::2] @ unit[:, b::2].transpose(1, 2)        # [B, |A|, |B|]
    best, partner = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    target = partner.gather(1, merged)                                # B index each merged A joins
    x_a, x_b, size_a, size_b = x[:, a::2], x[:, b::2], size[:, a::2], size[:, b::2]
    rows = lambda index: index[..., None].expand(-1, -1, channels)
    source_size = size_a.gather(1, merged)
    weighted = x_a.gather(1, rows(merged)) * source_size[..., None]
    total_b = (x_b * size_b[..., None]).scatter_add(1, rows(target), weighted)
    size_b = size_b.scatter_add(1, target, source_size)
    x_new = torch.cat([x[:, :prefix], x_a.gather(1, rows(kept)), total_b / size_b[..., None]], dim=1)
    size_new = torch.cat([size[:, :prefix], size_a.gather(1, kept), size_b], dim=1)
    if not track:
        return x_new, size_new, None
    # where each old token went: prefix in place, kept A tokens next, then B (merged A with their partner)
    moved = torch.empty(batch, tokens, dtype=torch.long, device=x.device)
    start_b = prefix + kept.shape[1]
    moved[:, :prefix] = torch.arange(prefix, device=x.device)
    moved_a = torch.empty_like(order)
    moved_a.scatter_(1, kept, torch.arange(prefix, start_b, device=x.device).expand(batch, -1))
    moved_a.scatter_(1, merged, start_b + target)
    moved[:, a::2] = moved_a
    moved[:, b::2] = torch.arange(start_b, start_b + size_b.shape[1], device=x.device)
    return x_new, size_new, moved


class ToMe(TokenReduction):
    def __init__(self, depth: int, prefix: int, r: int | Sequence[int]):
        super().__init__(depth, prefix)
        schedule = [int(r)] * depth if isinstance(r, (int, float)) else [int(v) for v in r]
        if len(schedule) != depth or any(v < 0 for v in schedule):
            raise ValueError(f"ToMe's r must be a count >= 0 or one per block ({depth} blocks), got {r!r}")
        self.r = schedule

    def tokens_after(self, index: int, tokens: int) -> int:
        return tokens - min(self.r[index], mergeable(tokens, self.prefix))

    def attention_bias(self):
        return None if self.size is None else self.size.log()[:, None, None, :]

    def reduce(self, index, x, qkv, attn):
        if qkv is None:
            return x, None
        _, keys = split_qkv(attn, qkv)
        x, self.size, moved = bipartite_merge(x, keys.mean(dim=1), self.size, self.r[index], self.prefix,
                                              track=self.source is not None)
        return x, moved

    def token_values(self, index):
        return self.size


def apply_tome(model: nn.Module, r: int | Sequence[int], copy: bool = False) -> nn.Module:
    """ToMe with r merges per block (one count, or one per block) on a timm
    VisionTransformer: patched in place (or, with copy, a copy sharing the
    weights), returned; its forward returns logits as the dense model's."""
    check_plain_vit(model)
    return patch(model, ToMe(len(model.blocks), model.num_prefix_tokens, r), copy_model=copy)
