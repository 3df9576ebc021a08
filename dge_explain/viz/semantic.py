"""Semantic-segmentation overlays: a label map coloured with a palette."""
from __future__ import annotations

import numpy as np

from .palettes import PALETTES


def semantic_overlay(image, labels, palette="ade20k", alpha: float = 0.55, ignore: int = 255,
                     classes=None) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int]]]]:
    """(overlay, legend): labels [H, W] of class ids (``ignore`` left uncoloured)
    over the image; palette is 'ade20k', 'coco', 'voc' or an [N, 3] array (then
    pass ``classes``).  The legend lists the classes present with their colours."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map {labels.shape} does not match the image {image.shape[:2]}")
    if isinstance(palette, str):
        if palette not in PALETTES:
            raise ValueError(f"palette must be one of {sorted(PALETTES)} or an [N, 3] array")
        names, colors = PALETTES[palette]
    else:
        colors = np.asarray(palette, dtype=np.uint8)
        names = classes or [str(i) for i in range(len(colors))]
    present = [int(c) for c in np.unique(labels) if c != ignore]
    unknown = [c for c in present if c >= len(colors)]
    if unknown:
        raise ValueError(f"label ids {unknown[:5]} exceed the palette of {len(colors)} classes")
    out = image.astype(np.float32)
    valid = labels != ignore
    out[valid] = (1 - alpha) * out[valid] + alpha * colors[labels[valid]]
    legend = [(names[c], tuple(int(v) for v in colors[c])) for c in present]
    return np.uint8(np.clip(out, 0, 255)), legend
