"""Colour palettes: Pascal VOC's, and generated palettes for any number of classes
(the class names are the data layer's: ``dge_explain.data.classes``)."""
from __future__ import annotations

import colorsys

import numpy as np

from dge_explain.data.classes import ADE20K_CLASSES, COCO_CLASSES, VOC_CLASSES


def voc_palette(count: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: bits of the class id spread over R, G, B."""
    palette = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def distinct_colors(count: int, saturation: float = 0.75, value: float = 0.95) -> np.ndarray:
    """`count` well-separated colours: hues stepped by the golden ratio."""
    hues = (np.arange(count) * 0.6180339887498949) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, saturation, value)] for h in hues],
                    dtype=np.uint8)


PALETTES = {"coco": (COCO_CLASSES, distinct_colors(len(COCO_CLASSES))),
            "voc": (VOC_CLASSES, voc_palette(len(VOC_CLASSES))),
            "ade20k": (ADE20K_CLASSES, distinct_colors(len(ADE20K_CLASSES)))}
