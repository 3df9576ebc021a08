"""Generic attention relevance (Chefer et al., ICCV 2021), without LRP: R starts
as the identity; for every block in order, A_bar = mean over heads of
(grad A * A) clamped at 0 (gradients of the target logit), and R <- R + A_bar R;
the map is the class token's row of R over the spatial tokens."""
from __future__ import annotations

import torch

from .attention_capture import AttentionExplainer, cls_row_maps

METHODS = {"relevance": "Chefer et al. (ICCV 2021) gradient-weighted attention relevance, no LRP"}


class Relevance(AttentionExplainer):
    name = "relevance"
    gradients = True
    needs_token_attention = True

    def map_from(self, record, images):
        relevance = None
        for probs, grad in zip(record.probs, record.grads):
            weighted = (grad.double() * probs.double()).clamp(min=0).mean(1)     # [B, N, N]
            if relevance is None:
                relevance = torch.eye(weighted.shape[-1], dtype=weighted.dtype,
                                      device=weighted.device).expand_as(weighted)
            relevance = relevance + weighted @ relevance
        return cls_row_maps(relevance[:, 0], self.model, images)


def build(model, requests: dict[str, str], seed: int) -> list:
    return [Relevance(model)]
