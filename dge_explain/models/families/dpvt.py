"""The DPVT family (dge_explain.models.dpvt): PVT's pyramid with deformable point
attention, no cls token; everything else as PVT."""
from __future__ import annotations

from ..dpvt import DeformablePVT
from .pvt import PVTAdapter


class DPVTAdapter(PVTAdapter):
    family = "dpvt"
    token_attention_refusal = (
        "DPVT's queries attend to a few bilinearly sampled points, not to tokens, so it is not defined for "
        "DPVT (gating maps, gradcam and the baselines without attention are)")

    def matches(self, model):
        return isinstance(model, DeformablePVT)
