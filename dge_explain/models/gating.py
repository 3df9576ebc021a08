"""Forcing the routers' choices, for measurements that must not depend on a
trained router: every region finest, every region coarsest, or a seeded random
fraction of finest regions (the rest spread over the coarser options)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .encoder import DynamicGrainedEncoder


def dge_modules(model: nn.Module) -> list[DynamicGrainedEncoder]:
    """The model's DGEs, in forward order."""
    return [m for m in model.modules() if isinstance(m, DynamicGrainedEncoder)]


def finest(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)


def coarsest(logits: torch.Tensor) -> torch.Tensor:
    return torch.full(logits.shape[:-1], logits.shape[-1] - 1, dtype=torch.long, device=logits.device)


def random_fraction(fine: float, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Each region finest with probability `fine`, else a uniformly drawn coarser option."""
    if not 0.0 <= fine <= 1.0:
        raise ValueError(f"fine fraction must be in [0, 1], got {fine}")
    generator = torch.Generator().manual_seed(seed)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        shape, options = logits.shape[:-1], logits.shape[-1]
        is_fine = torch.rand(shape, generator=generator) < fine
        coarse = torch.randint(1, max(options, 2), shape, generator=generator).clamp(max=options - 1)
        return torch.where(is_fine, torch.zeros_like(coarse), coarse).to(logits.device)

    return choose


@contextlib.contextmanager
def force_gates(model: nn.Module, policy: Callable[[torch.Tensor], torch.Tensor] | str) -> Iterator[None]:
    """Inside the block every DGE of `model` takes its choices from `policy`
    ('finest', 'coarsest', or logits [B, Hr, Wr, K] -> indices [B, Hr, Wr])."""
    named = {"finest": finest, "coarsest": coarsest}
    if isinstance(policy, str):
        if policy not in named:
            raise ValueError(f"policy must be one of {sorted(named)} or a callable, got {policy!r}")
        policy = named[policy]
    modules = dge_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no DynamicGrainedEncoder")
    previous = [m.forced_choice for m in modules]
    for module in modules:
        module.forced_choice = policy
    try:
        yield
    finally:
        for module, before in zip(modules, previous):
            module.forced_choice = before
