"""Generic attention relevance (Chefer et al., ICCV 2021), without LRP: R starts
as the identity; for every block in order, A_bar = mean over heads of
(grad A * A) clamped at 0 (gradients of the target logit), and R <- R + A_bar R;
the map is the class token's row of R over the spatial tokens."""
from __future__ import annotations

from .attention_capture import AttentionExplainer, cls_row_maps

METHODS = {"relevance": {"title": "Relevance", "units": "relevance", "scale": None, "passes": "attention",
                       "help": "Chefer et al. (ICCV 2021) gradient-weighted attention relevance, no LRP"}}


class Relevance(AttentionExplainer):
    name = "relevance"
    gradient_blocks = "all"
    needs_token_attention = True

    def map_from(self, record, images):
        # R = (I + A_bar_L) ... (I + A_bar_1): its cls row is carried from the last
        # block down, a row vector times each factor (O(N^2) per block, not O(N^3));
        # the head mean is taken on packed rows where the block has them
        row = record.cls_one_hot()
        for block in reversed(range(len(record.probs))):
            weighted = (record.grads[block].double() * record.probs[block].double()).clamp(min=0).mean(1)
            row = row + record.times(row, weighted, block)
        return cls_row_maps(row, self.model, images)


def build(model, requests: dict[str, str], seed: int) -> list:
    return [Relevance(model)]
