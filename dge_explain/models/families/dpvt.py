"""The DPVT family (dge_explain.models.dpvt): PVT's pyramid with deformable point
attention, no cls token; everything else as PVT."""
from __future__ import annotations

from ..dpvt import DeformablePVT
from .pvt import PVTAdapter


class DPVTAdapter(PVTAdapter):
    family = "dpvt"
    attention_refusal = token_attention_refusal = (
        "DPVT's queries attend to a few bilinearly sampled points per head, not to tokens: it has no attention "
        "probabilities to read (gating maps, the CAMs and random maps are defined for DPVT)")

    def matches(self, model):
        return isinstance(model, DeformablePVT)

    def attention_macs(self, attn, dim, n_in, n_q, original):
        """P points per head: v Nin C^2; offsets and point weights 3 Nq C h P; proj
        Nq C^2; softmax over the points 3 Nq h P; sampling 4 Nq P C (four bilinear
        corners per channel and point).  The original has no DPVT accounting: both
        accountings count these alike."""
        points, heads = attn.points, attn.num_heads
        matmul = n_in * dim * dim + 3 * n_q * dim * heads * points + n_q * dim * dim
        return matmul, 3 * n_q * heads * points + 4 * n_q * points * dim
