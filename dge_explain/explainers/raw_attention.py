"""Raw attention: the last block's attention averaged over heads, the class
token's row over the spatial tokens."""
from __future__ import annotations

from .attention_capture import AttentionExplainer, cls_row_maps

METHODS = {"attention": {"title": "Raw attention", "units": "attention", "scale": None, "passes": "attention",
                       "help": "raw attention: the last block's head-averaged attention, cls row"}}


class RawAttention(AttentionExplainer):
    name = "attention"

    def map_from(self, record, images):
        return cls_row_maps(record.cls_rows(record.probs[-1], -1).mean(1), self.model, images)


def build(model, requests: dict[str, str], seed: int) -> list:
    return [RawAttention(model)]
