"""Attention rollout (Abnar and Zuidema, ACL 2020), as Chefer et al.'s code
computes it: per block A = mean over heads + identity (the residual), rows
renormalised to sum 1; the product R = A_L ... A_1 from the first block to the
last; the class token's row of R over the spatial tokens."""
from __future__ import annotations

from .attention_capture import AttentionExplainer, cls_row_maps

METHODS = {"rollout": {"title": "Rollout", "units": "rollout", "scale": None, "passes": "attention",
                     "help": "attention rollout: product of head-averaged attention plus identity, cls row"}}


class Rollout(AttentionExplainer):
    name = "rollout"
    needs_token_attention = True

    def map_from(self, record, images):
        # the cls row of A_L ... A_1, carried from the last block down as a row
        # vector times each factor (O(N^2) per block, not O(N^3)): with s the row
        # sums of mean_h A + I, row (mean_h A + I) / s = row (mean_h A / s) + row / s
        row = record.cls_one_hot()
        for block in reversed(range(len(record.probs))):
            attention = record.probs[block].mean(1).double()
            sums = attention.sum(-1) + 1
            row = record.times(row, attention / sums[..., None], block) + row / record.at_tokens(sums, block)
        return cls_row_maps(row, self.model, images)


def build(model, requests: dict[str, str], seed: int) -> list:
    return [Rollout(model)]
