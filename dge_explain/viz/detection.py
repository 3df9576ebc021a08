"""Detection and instance-segmentation overlays in the style detectron2 and
mmdetection users know: a box per instance with its class name and score, its
mask filled translucently in the instance's own colour and outlined."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from dge_explain.data.annotations import Instance

from .palettes import distinct_colors


def draw_instances(image, instances: Sequence[Instance], alpha: float = 0.45,
                   colors: np.ndarray | None = None, thickness: int = 2,
                   font_scale: float | None = None) -> np.ndarray:
    """Instances in distinct colours (largest first, so small ones stay visible)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
    canvas = image.astype(np.float32)
    colors = distinct_colors(max(1, len(instances))) if colors is None else np.asarray(colors)
    order = sorted(range(len(instances)), key=lambda i: -_area(instances[i].box))
    for i in order:
        mask = instances[i].mask
        if mask is not None:
            if mask.shape != image.shape[:2]:
                raise ValueError(f"instance mask {mask.shape} does not match the image {image.shape[:2]}")
            canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colors[i % len(colors)]
    out = np.uint8(np.clip(canvas, 0, 255))
    font_scale = font_scale or max(0.35, min(image.shape[:2]) / 900)
    for i in order:
        instance, color = instances[i], tuple(int(c) for c in colors[i % len(colors)])
        if instance.mask is not None:
            contours, _ = cv2.findContours(np.uint8(instance.mask), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, 1)
        x0, y0, x1, y1 = (int(round(v)) for v in instance.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        text = instance.label if instance.score is None else f"{instance.label} {instance.score:.2f}"
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = max(0, y0 - height - baseline - 2)
        cv2.rectangle(out, (x0, top), (x0 + width + 2, top + height + baseline + 2), color, -1)
        ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, text, (x0 + 1, top + height + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 1,
                    cv2.LINE_AA)
    return out


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
