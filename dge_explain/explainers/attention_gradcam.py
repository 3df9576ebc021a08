"""Attention GradCAM, the GradCAM of Chefer et al.'s tables (and so of the DGE
paper's Table 5): on the last block's attention A, the gradient of the target
logit with respect to A, taken on the class token's row and averaged over the
spatial positions, weighs each head; the map is ReLU(mean over heads of
weight_h * A_h) on the class token's row over the spatial tokens."""
from __future__ import annotations

import torch

from .attention_capture import AttentionExplainer, cls_row_maps, layout

METHODS = {"attention-gradcam": {"title": "Attention GradCAM", "units": "a.u.", "scale": None, "passes": "attention",
                               "help": "GradCAM on the last block's attention (Chefer et al.'s GradCAM baseline)"}}


class AttentionGradCAM(AttentionExplainer):
    name = "attention-gradcam"
    gradient_blocks = "last"

    def map_from(self, record, images):
        extra, _, _ = layout(self.model, images)
        cam = record.cls_rows(record.probs[-1], -1)[:, :, extra:]           # [B, h, spatial]
        grad = record.cls_rows(record.grads[-1], -1)[:, :, extra:]
        weights = grad.mean(-1, keepdim=True)
        rows = (cam * weights).mean(1).clamp(min=0)
        pad = rows.new_zeros(rows.shape[0], extra)         # cls_row_maps drops the extra tokens again
        return cls_row_maps(torch.cat([pad, rows], 1), self.model, images)


def build(model, requests: dict[str, str], seed: int) -> list:
    return [AttentionGradCAM(model)]
