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
