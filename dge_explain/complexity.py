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

Per block, with Nin inputs and Nq queries (extra tokens included), C channels,
h heads, MLP hidden width Ch, spatial-reduction ratio r (PVT):
  q, proj: 2 Nq C^2;  kv: 2 Nin/r^2 C^2 (+ Nin C^2 + Nin/r^2 C for the r x r conv
  and its norm);  QK^T and AV: 2 Nq Nin/r^2 C;  softmax: 3 Nq Nin/r^2 h;
  MLP: Nq (2 C Ch + Ch);  router: Nin/S^2 C (pool) + Nin/S^2 C K (gate).
DPVT's deformable attention with P points per head instead: v: Nin C^2;
offsets and point weights: 3 Nq C h P;  proj: Nq C^2;  softmax: 3 Nq h P;
sampling: 4 Nq P C (four bilinear corners per channel and point).  The original
code has no DPVT accounting; both accountings count these terms alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dge_explain.models.attention import SpatialReductionAttention
from dge_explain.models.blocks import DGEBlock
from dge_explain.models.families import adapter_for

ACCOUNTINGS = ("corrected", "original")


@dataclass(frozen=True)
class BlockSpec:
    dim: int
    heads: int
    hidden: int
    sr_ratio: int      # 1: keys are all inputs
    pvt: bool          # PVT-style attention accounting
    dge: bool
    points: int = 0    # > 0: deformable attention sampling this many points per head (DPVT)


def block_spec(block: nn.Module) -> BlockSpec:
    attn = block.attn
    sr = getattr(attn, "sr_ratio", 1)
    return BlockSpec(dim=block.norm1.normalized_shape[0], heads=attn.num_heads,
                     hidden=block.mlp.fc1.out_features, sr_ratio=sr,
                     pvt=isinstance(attn, SpatialReductionAttention), dge=isinstance(block, DGEBlock),
                     points=getattr(attn, "points", 0))


def block_macs(spec: BlockSpec, n_in, n_q, accounting: str = "corrected", terms: str = "all"):
    """MACs of one block for n_in inputs and n_q queries (numbers or tensors).
    terms='matmul' keeps only matrix products (what FLOP counters count)."""
    _check_accounting(accounting)
    original = accounting == "original"
    c, h, hidden, r2 = spec.dim, spec.heads, spec.hidden, spec.sr_ratio ** 2
    keys = n_in / r2
    mlp = n_q * (2 * c * hidden)
    if spec.points:
        matmul = n_in * c * c + 3 * n_q * c * h * spec.points + n_q * c * c + mlp
        attention_other = 3 * n_q * h * spec.points + 4 * n_q * spec.points * c
    else:
        matmul = 2 * n_q * c * c + 2 * keys * c * c + mlp
        matmul = matmul + (1 if spec.pvt and original else 2) * n_q * keys * c
        if spec.sr_ratio > 1:
            matmul = matmul + n_in * c * c
        attention_other = 3 * n_q * keys * h + (keys * c if spec.sr_ratio > 1 else 0)
    if terms == "matmul":
        return matmul
    if original:
        norms = 2 * n_in * c
    else:
        norms = n_in * c + n_q * c * (2 if spec.dge else 1)
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
        routing, spec = block.dge.routing, block_spec(block)
        n_in = float(routing.tokens)
        n_q = routing.queries().double()
        router = router_macs(spec.dim, len(routing.split_sizes), block.dge.region_size, n_in)
        block_static.append(torch.full_like(n_q, block_macs(spec, n_in, n_in, accounting) + router))
        block_dynamic.append(block_macs(spec, n_in, n_q, accounting) + router)
        fine.append(routing.gates[..., 0].detach().double().mean(dim=(1, 2)))
    static = constant + torch.stack(block_static).sum(0)
    dynamic = constant + torch.stack(block_dynamic).sum(0)
    return Complexity(static, dynamic, block_static, block_dynamic, fine)


def dense_macs(model: nn.Module, image_size: tuple[int, int], accounting: str = "corrected",
               terms: str = "all") -> float:
    """MACs per image of a dense model (timm ViT/DeiT or dense PVT) at image_size."""
    _check_accounting(accounting)
    total = sum(block_macs(block_spec(block), n, n, accounting, terms)
                for block, n, _ in adapter_for(model).block_inputs(model, image_size))
    return total + _stem_and_head_macs(model, image_size, accounting, terms)


def expected_ratio(model: nn.Module, image_size: tuple[int, int], fine: float,
                   accounting: str = "corrected") -> float:
    """Complexity ratio of a DGE model whose regions are finest with probability
    `fine` and otherwise spread uniformly over the coarser options (the gates of
    ``models.random_fraction``), in expectation."""
    _check_accounting(accounting)
    static = dynamic = _stem_and_head_macs(model, image_size, accounting)
    for block, n_in, cells in adapter_for(model).block_inputs(model, image_size):
        dge, spec = block.dge, block_spec(block)
        splits = dge.split_sizes
        coarse = [k * k for k in splits[1:]] or [splits[0] ** 2]
        per_region = fine * splits[0] ** 2 + (1 - fine) * sum(coarse) / len(coarse)
        n_q = (n_in - cells) + cells / dge.region_size ** 2 * per_region
        router = router_macs(spec.dim, len(splits), dge.region_size, n_in)
        static += block_macs(spec, n_in, n_in, accounting) + router
        dynamic += block_macs(spec, n_in, n_q, accounting) + router
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
