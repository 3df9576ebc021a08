"""Attention rollout (Abnar and Zuidema, ACL 2020), as Chefer et al.'s code
computes it: per block A = mean over heads + identity (the residual), rows
renormalised to sum 1; the product R = A_L ... A_1 from the first block to the
last; the class token's row of R over the spatial tokens."""
from __future__ import annotations

import torch

from .attention_capture import AttentionExplainer, cls_row_maps

METHODS = {"rollout": "attention rollout: product of head-averaged attention plus identity, cls row"}


class Rollout(AttentionExplainer):
    name = "rollout"
    needs_token_attention = True

    def map_from(self, record, images):
        # the cls row of A_L ... A_1, carried from the last block down as a row
        # vector times each factor (O(N^2) per block, not O(N^3))
        row = None
        for probs in reversed(record.probs):
            attention = probs.mean(1).double()
            attention = attention + torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
            attention = attention / attention.sum(-1, keepdim=True)
            row = attention[:, 0] if row is None else (row[:, None] @ attention)[:, 0]
        return cls_row_maps(row, self.model, images)


def build(model, requests: dict[str, str], seed: int) -> list:
    return [Rollout(model)]
