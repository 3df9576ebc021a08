"""What a map's values mean in a picture: its units, its nominal scale, and
whether its range is negligible.

Pictures stretch every map from its own minimum to its own maximum (the field's
display convention, as pytorch-grad-cam's ``show_cam_on_image``), which turns
numerical noise into convincing blobs: layer 12's p_fine on the shipped model
spans about 1e-19 ... 1e-5.  So every picture prints each map's own range in
its units, and a map whose range is negligible is drawn as flat instead.

Negligible (``negligible``, the one definition): the map's range (max - min,
NaN ignored) is below ``NEGLIGIBLE`` = 1/256 of its kind's nominal scale, i.e.
drawn on that scale the whole map would fall within one level of an 8-bit
colour map: one colour.  Nominal scales, per kind of map (``map_scale``: each
method declares its units and scale in its METHODS entry):

* p_fine (``layerN``), query density (``layerN-density``): probabilities and
  shares, scale 1;
* margins (``layerN-margin``): log-odds in logits, scale 1 logit;
* the pytorch-grad-cam family: each map as pytorch-grad-cam returns it (min-max
  scaled to 0..1 per image), scale 1; random: uniform 0..1, scale 1;
* attention, rollout, attention GradCAM, relevance and unknown maps have no
  fixed scale: the map's own peak |value| (flat = varies by less than 1/256 of
  its peak).

On the shipped model's first 48 ECSSD images layer 12's p_fine range is at
most 2.4e-3 (46 of 48 below 1e-3), layer 8's at least 0.62.  The scoring
(``dge_explain.evaluation.metrics``) keeps the protocol's min-max normalisation: this
concerns pictures only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NEGLIGIBLE = 1 / 256


@dataclass(frozen=True)
class MapScale:
    units: str                 # how the values read, printed beside the range
    nominal: float | None      # the span a map of this kind can take; None: the map's own peak |value|


UNKNOWN = MapScale("", None)


def map_scale(name: str) -> MapScale:
    """The units and nominal scale of a map, from its name ('layer8', 'layer8-margin',
    'gradcam', 'rollout', ...), as its method declares them (``dge_explain.methods``)."""
    from dge_explain.evaluation.report import map_method
    from dge_explain.methods import registry

    method = registry().get(map_method(name)[0])
    return MapScale(method.units, method.scale) if method else UNKNOWN


def as_float64(heat) -> np.ndarray:
    if isinstance(heat, torch.Tensor):
        return heat.detach().cpu().double().numpy()
    return np.asarray(heat, dtype=np.float64)


def value_range(heat) -> tuple[float, float]:
    """(min, max) of a map, NaN ignored; (nan, nan) when it holds no number."""
    values = as_float64(heat)
    finite = values[~np.isnan(values)]
    if not finite.size:
        return float("nan"), float("nan")
    return float(finite.min()), float(finite.max())


def negligible(heat, scale: MapScale) -> bool:
    """Whether the map's range is below NEGLIGIBLE of its nominal scale (module
    docstring); a map without a number is negligible too."""
    low, high = value_range(heat)
    if np.isnan(low):
        return True
    nominal = scale.nominal if scale.nominal is not None else max(abs(low), abs(high))
    return high - low < NEGLIGIBLE * nominal or high == low


def number(value: float) -> str:
    """Compact and exact enough to tell noise from signal: 0.98, -12.3, 2.4e-07."""
    if value == 0 or np.isnan(value):
        return f"{value:g}"
    return f"{value:.3g}" if 1e-2 <= abs(value) < 1e4 else f"{value:.1e}"


def range_text(heat, scale: MapScale) -> str:
    """The map's own range in its units: 'p_fine 1.0e-20 … 2.4e-07'."""
    low, high = value_range(heat)
    if np.isnan(low):
        return f"{scale.units} no value (all NaN)".strip()
    return f"{scale.units} {number(low)} … {number(high)}".strip()


def flat_text(heat) -> str:
    """How flat a negligible map is: 'flat: range 2.4e-07'."""
    low, high = value_range(heat)
    return "flat: no value" if np.isnan(low) else f"flat: range {number(high - low)}"
