"""Multiply-accumulate counts of DGE and dense models (appendix B.3 of the paper):
a static part (everything, with every query present) and a dynamic part that
counts only the queries the gates actually kept.

Two accountings:

* ``"original"`` reproduces the authors' code to the MAC (for "MAC_avg" parity):
  its patch-embedding constant uses 3*W instead of H*W input pixels
  (DeiT-Ti/S static at 256: 1.680 / 6.089 G), PVT attention counts one of its
  two matmuls, and LayerNorm 2 is counted on all inputs.
* ``"corrected"`` (default) fixes those three: H*W pixels, both attention
  matmuls, LayerNorms counted on the tokens they run on (DGE blocks run
  LayerNorm 1 on the inputs and again on the pooled queries).

Per block, with Nin inputs and Nq queries (extra tokens included), C channels and
MLP hidden width Ch: MLP: Nq (2 C Ch + Ch);  router: Nin/S^2 C (pool) +
Nin/S^2 C K (gate);  the attention's terms come from the model family's adapter
(``BackboneAdapter.attention_macs``: token attention for ViT, spatial reduction
for PVT, deformable points for DPVT).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dge_explain.models.blocks import DGEBlock
from dge_explain.models.families import adapter_for

ACCOUNTINGS = ("corrected", "original")


def block_macs(adapter, block: nn.Module, n_in, n_q, accounting: str = "corrected", terms: str = "all"):
    """MACs of one block of the adapter's family for n_in inputs and n_q queries
    (numbers or tensors): its attention (the adapter's terms), MLP and norms.
    terms='matmul' keeps only matrix products (what FLOP counters count)."""
    _check_accounting(accounting)
    original = accounting == "original"
    c, hidden = block.norm1.normalized_shape[0], block.mlp.fc1.out_features
    attention, attention_other = adapter.attention_macs(block.attn, c, n_in, n_q, original)
    matmul = attention + n_q * (2 * c * hidden)
    if terms == "matmul":
        return matmul
    if original:
        norms = 2 * n_in * c
    else:
        norms = n_in * c + n_q * c * (2 if isinstance(block, DGEBlock) else 1)
    return matmul + norms + attention_other + n_q * hidden


def router_macs(dim: int, options: int, region_size: int, n_in) -> float:
    regions = n_in / region_size ** 2
    return regions * dim + regions * dim * options


def _check_accounting(accounting: str) -> None:
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"accounting must be one of {ACCOUNTINGS}, got {accounting!r}")


def _stem_and_head_macs(model: nn.Module, image_hw: tuple[int, int], accounting: str,
                        terms: str = "all") -> float:
    """Patch embedding(s) and classifier: the same for static and dynamic."""
    pixels = image_hw[0] * image_hw[1]
    if accounting == "original":
        pixels = 3 * image_hw[1]  # the original's x.shape[1] * x.shape[2] of an NCHW image
    total = adapter_for(model).stem_macs(model, pixels, terms)
    head = model.head
    if isinstance(head, nn.Linear):
        total += head.in_features * head.out_features
    head_dist = getattr(model, "head_dist", None)
    if isinstance(head_dist, nn.Linear):
        total += head_dist.in_features * head_dist.out_features
    return total


@dataclass
class Complexity:
    """Per-image MACs [B] of one forward pass (float64; dynamic is differentiable
    through the gates in training), and per block."""
    static: torch.Tensor
    dynamic: torch.Tensor
    block_static: list[torch.Tensor]
    block_dynamic: list[torch.Tensor]
    fine_fraction: list[torch.Tensor]   # per DGE block: share of regions at the finest option [B]

    @property
    def ratio(self) -> torch.Tensor:
        """Batch mean dynamic over batch mean static (the ratio of means, as the original)."""
        return self.dynamic.mean() / self.static.mean().clamp(min=1.0)


def dge_complexity(model: nn.Module, accounting: str = "corrected") -> Complexity:
    """MACs of the model's last forward pass, from the gates its DGEs used."""
    _check_accounting(accounting)
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    dge_blocks = [b for b in blocks if isinstance(b, DGEBlock)]
    if not dge_blocks or any(b.dge.routing is None for b in dge_blocks):
        raise ValueError("run a forward pass through the DGE model before measuring its complexity")
    if len(dge_blocks) != len(blocks):
        raise ValueError("dge_complexity needs a DGE in every block")
    first = dge_blocks[0].dge
    image_hw = adapter.image_size(model, first.routing.grid)
    constant = _stem_and_head_macs(model, image_hw, accounting)
    block_static, block_dynamic, fine = [], [], []
    for block in dge_blocks:
        routing, dim = block.dge.routing, block.norm1.normalized_shape[0]
        n_in = float(routing.tokens)
        n_q = routing.queries().double()
        router = router_macs(dim, len(routing.split_sizes), block.dge.region_size, n_in)
        block_static.append(torch.full_like(n_q, block_macs(adapter, block, n_in, n_in, accounting) + router))
        block_dynamic.append(block_macs(adapter, block, n_in, n_q, accounting) + router)
        fine.append(routing.gates[..., 0].detach().double().mean(dim=(1, 2)))
    static = constant + torch.stack(block_static).sum(0)
    dynamic = constant + torch.stack(block_dynamic).sum(0)
    return Complexity(static, dynamic, block_static, block_dynamic, fine)


def dense_macs(model: nn.Module, image_size: tuple[int, int], accounting: str = "corrected",
               terms: str = "all") -> float:
    """MACs per image of a dense model (timm ViT/DeiT or dense PVT) at image_size."""
    _check_accounting(accounting)
    adapter = adapter_for(model)
    total = sum(block_macs(adapter, block, n, n, accounting, terms)
                for block, n, _ in adapter.block_inputs(model, image_size))
    return total + _stem_and_head_macs(model, image_size, accounting, terms)


def expected_ratio(model: nn.Module, image_size: tuple[int, int], fine: float,
                   accounting: str = "corrected") -> float:
    """Complexity ratio of a DGE model whose regions are finest with probability
    `fine` and otherwise spread uniformly over the coarser options (the gates of
    ``models.random_fraction``), in expectation."""
    _check_accounting(accounting)
    static = dynamic = _stem_and_head_macs(model, image_size, accounting)
    adapter = adapter_for(model)
    for block, n_in, cells in adapter.block_inputs(model, image_size):
        dge, dim = block.dge, block.norm1.normalized_shape[0]
        splits = dge.split_sizes
        coarse = [k * k for k in splits[1:]] or [splits[0] ** 2]
        per_region = fine * splits[0] ** 2 + (1 - fine) * sum(coarse) / len(coarse)
        n_q = (n_in - cells) + cells / dge.region_size ** 2 * per_region
        router = router_macs(dim, len(splits), dge.region_size, n_in)
        static += block_macs(adapter, block, n_in, n_in, accounting) + router
        dynamic += block_macs(adapter, block, n_in, n_q, accounting) + router
    return dynamic / static


def fine_fraction_for_ratio(model: nn.Module, image_size: tuple[int, int], target: float) -> float:
    """The fine fraction whose expected complexity ratio is `target` (bisection)."""
    low, high = 0.0, 1.0
    if not expected_ratio(model, image_size, low) <= target <= expected_ratio(model, image_size, high):
        raise ValueError(f"complexity ratio {target} is out of reach at {image_size}: between "
                         f"{expected_ratio(model, image_size, low):.3f} and 1")
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_ratio(model, image_size, middle) < target else (low, middle)
    return (low + high) / 2


def budget_loss(complexity: Complexity, gamma: float = 0.5, weight: float = 1.0) -> torch.Tensor:
    """weight * (mean dynamic / mean static - gamma)^2 in float64, as the original training loss."""
    return weight * (complexity.ratio - gamma) ** 2
