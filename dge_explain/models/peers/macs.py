"""MACs of a ViT under token reduction, exact from the token counts of each block
(known before any forward: ToMe and EViT remove a fixed number of tokens per
block), and the setting of a method that meets a target MACs ratio.

A block runs its attention on the n tokens entering it and its second half
(norm2, MLP) on the m tokens its reduction leaves; each part is counted as
``complexity.block_macs`` counts a dense block.  The reduction itself adds, in
matrix products (what a FLOP counter sees): ToMe's key similarity |A| |B| d per
merging block; EViT's class-token row of attention n C per fusing block.  With
"all" terms also: ToMe's mean of the keys over heads (n C), their normalisation
(n d), the size weighting of the merge ((n - prefix) C) and, once sizes exist,
proportional attention's log-size bias (n^2 h); EViT's softmax of the row (3 n h
as the block counts a softmax), its mean over heads (n h) and the fusion
((n - prefix - k) C).
"""
from __future__ import annotations

from torch import nn

from dge_explain.complexity import block_macs, dense_macs

from ..families import adapter_for
from .base import TokenReduction, check_plain_vit, token_reduction_of
from .evit import EViT
from .tome import ToMe, _sides, mergeable

RATIO_STEPS = 1000     # EViT's keep rates searched: 1/1000 .. 1


def token_counts(model: nn.Module, image_size: tuple[int, int], reduction: TokenReduction | None = None
                 ) -> list[tuple[int, int]]:
    """Per block, (tokens its attention runs on, tokens its MLP runs on) at image_size,
    under `reduction` (default: the model's own; a dense model keeps them all)."""
    reduction = reduction if reduction is not None else token_reduction_of(model)
    tokens = adapter_for(model).block_inputs(model, image_size)[0][1]
    counts = []
    for index in range(len(model.blocks)):
        after = tokens if reduction is None else reduction.tokens_after(index, tokens)
        counts.append((tokens, after))
        tokens = after
    return counts


def _mlp_token_macs(adapter, block: nn.Module, terms: str) -> float:
    """MACs one token costs in a block's second half (norm2 and MLP): a block's MACs
    for one query over no inputs, less its attention's for the same."""
    dim = block.norm1.normalized_shape[0]
    matmul, other = adapter.attention_macs(block.attn, dim, 0, 1, False)
    return block_macs(adapter, block, 0, 1, terms=terms) - matmul - (other if terms == "all" else 0)


def _reduction_macs(reduction: TokenReduction | None, block: nn.Module, tokens: int, after: int, sized: bool,
                    terms: str) -> float:
    """What the reduction itself costs in a block `tokens` enter and `after` leave
    (see the module's text); `sized`: an earlier block has merged."""
    if reduction is None:
        return 0
    heads, head_dim = block.attn.num_heads, block.attn.head_dim
    channels, prefix = heads * head_dim, reduction.prefix
    macs = 0.0
    if isinstance(reduction, ToMe) and after < tokens:
        a, b = _sides(tokens, prefix)
        macs += len(a) * len(b) * head_dim
        if terms == "all":
            macs += tokens * channels + tokens * head_dim + (tokens - prefix) * channels
    if isinstance(reduction, ToMe) and sized and terms == "all":
        macs += tokens * tokens * heads
    if isinstance(reduction, EViT) and after < tokens:
        macs += tokens * channels
        if terms == "all":
            macs += 4 * tokens * heads + (tokens - after + 1) * channels
    return macs


def reduced_macs(model: nn.Module, image_size: tuple[int, int], reduction: TokenReduction | None = None,
                 terms: str = "all") -> float:
    """MACs per image of the model at image_size under `reduction` (default: the
    model's own), corrected accounting; terms='matmul': matrix products only."""
    adapter = adapter_for(model)
    reduction = reduction if reduction is not None else token_reduction_of(model)
    total = dense_macs(model, image_size, terms=terms)
    full = adapter.block_inputs(model, image_size)[0][1]
    sized = False
    for block, (tokens, after) in zip(model.blocks, token_counts(model, image_size, reduction)):
        total -= block_macs(adapter, block, full, full, terms=terms)
        total += block_macs(adapter, block, tokens, tokens, terms=terms) \
            - (tokens - after) * _mlp_token_macs(adapter, block, terms)
        total += _reduction_macs(reduction, block, tokens, after, sized, terms)
        sized = sized or after < tokens
    return total


def macs_ratio(model: nn.Module, image_size: tuple[int, int], reduction: TokenReduction | None = None) -> float:
    """MACs under the reduction over the dense model's MACs (all terms)."""
    return reduced_macs(model, image_size, reduction) / dense_macs(model, image_size)


def _nearest(model, image_size, candidates, target: float) -> tuple[TokenReduction, float]:
    """The candidate whose MACs ratio is nearest the target (the first of equals);
    settings that leave the same token counts are counted once."""
    ratios = {}
    for candidate in candidates:
        key = (type(candidate), tuple(token_counts(model, image_size, candidate)))
        if key not in ratios:
            ratios[key] = (macs_ratio(model, image_size, candidate), candidate)
    ratio, best = min(ratios.values(), key=lambda item: abs(item[0] - target))
    return best, ratio


def tome_for_ratio(model: nn.Module, image_size: tuple[int, int], target: float) -> tuple[ToMe, float]:
    """ToMe with the constant r whose MACs ratio at image_size is nearest `target`,
    and that ratio (r runs from 0 to the most the first block can merge)."""
    check_plain_vit(model)
    depth, prefix = len(model.blocks), model.num_prefix_tokens
    tokens = adapter_for(model).block_inputs(model, image_size)[0][1]
    return _nearest(model, image_size, [ToMe(depth, prefix, r) for r in range(mergeable(tokens, prefix) + 1)],
                    target)


def evit_for_ratio(model: nn.Module, image_size: tuple[int, int], target: float, layers=None
                   ) -> tuple[EViT, float]:
    """EViT at `layers` (default: the paper's) with the keep rate (in steps of 1/1000,
    the largest of equals) whose MACs ratio at image_size is nearest `target`."""
    check_plain_vit(model)
    depth, prefix = len(model.blocks), model.num_prefix_tokens
    rates = [step / RATIO_STEPS for step in range(RATIO_STEPS, 0, -1)]
    return _nearest(model, image_size, [EViT(depth, prefix, rate, layers) for rate in rates], target)
