"""Where the model's input came from in the photo, and back: a map computed on the
model's S x S input carried to the image's own W x H pixels through the resize
(and crop) that the preprocessing applied.

Both preprocessing geometries resize (PIL's pixel-centre convention, as
``F.interpolate(align_corners=False)``) and then crop the centre:

* ``squash`` (the segmentation protocol, ``Preprocessing.for_segmentation``): the
  whole image to S x S; every pixel of the photo gets a value;
* ``center`` (classification): the short side to floor(S / crop_pct), the centre
  S x S kept; pixels outside the crop were never seen and get NaN.

The map is sampled bilinearly at each image pixel's centre (edges clamped, as
``F.interpolate``), one axis at a time, in the map's own precision.
"""
from __future__ import annotations

import math

import numpy as np

from .preprocess import Preprocessing


def resized_size(preprocessing: Preprocessing, image_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image after the resize, before the centre crop."""
    width, height = image_size
    scale = math.floor(preprocessing.input_size / preprocessing.crop_pct)
    if preprocessing.crop_mode == "squash":
        return scale, scale
    if width <= height:   # torchvision's Resize(int): the short side to `scale`, the long one truncated
        return scale, int(scale * height / width)
    return int(scale * width / height), scale


def _axis_weights(count: int, resized: int, size: int, offset: int, dtype) -> np.ndarray:
    """[count, size] bilinear weights taking `size` map samples (the crop, starting
    at `offset` of the `resized` axis) to `count` image pixels; rows of pixels
    outside the crop are NaN."""
    centres = (np.arange(count, dtype=np.float64) + 0.5) * resized / count - 0.5 - offset
    weights = np.zeros((count, size), dtype=dtype)
    inside = (centres >= -0.5) & (centres <= size - 0.5)
    position = np.clip(centres, 0, size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    fraction = position - low
    rows = np.arange(count)
    np.add.at(weights, (rows, low), 1 - fraction)
    np.add.at(weights, (rows, high), fraction)
    weights[~inside] = np.nan
    return weights


def map_to_image(values, image_size: tuple[int, int], preprocessing: Preprocessing) -> np.ndarray:
    """A map on the model's input grid ([h, w], any resolution of the S x S input)
    as a [H, W] array over the photo of `image_size` = (W, H); NaN where the
    preprocessing cropped the photo away."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"a map is [h, w], got shape {values.shape}")
    dtype = values.dtype if values.dtype in (np.float32, np.float64) else np.float32
    width, height = image_size
    resized_w, resized_h = resized_size(preprocessing, image_size)
    size = preprocessing.input_size
    left, top = int(round((resized_w - size) / 2)), int(round((resized_h - size) / 2))
    # the map's own grid covers the S x S input: one map sample = size / h input pixels
    rows = _axis_weights(height, resized_h * values.shape[0] / size, values.shape[0],
                         top * values.shape[0] / size, dtype)
    columns = _axis_weights(width, resized_w * values.shape[1] / size, values.shape[1],
                            left * values.shape[1] / size, dtype)
    return rows @ values.astype(dtype) @ columns.T
