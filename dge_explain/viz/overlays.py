"""Heatmaps, router granularity grids and mask contours over an image; maps
carried back to the image's own size and aspect ratio, each drawn with its own
range (flat ones marked, not stretched: see ``ranges``)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .ranges import MapScale, as_float64, flat_text, negligible, range_text

GRANULARITY_COLORS = ((255, 255, 255), (255, 200, 0), (0, 160, 255), (255, 60, 60))


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
    return image


def resize(array: np.ndarray, image_size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """[h, w] or [h, w, C] to (width, height): bilinear (half-pixel centres, as
    torch's align_corners=False) unless both sides shrink, then pixel-area means;
    either way every value stays within the input's range."""
    width, height = (int(v) for v in image_size)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be (width, height) of at least 1 pixel each, got {image_size}")
    if array.shape[:2] == (height, width):
        return array
    shrinking = width <= array.shape[1] and height <= array.shape[0]
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=mode)


def unsquash(heat, image_size: tuple[int, int]) -> np.ndarray:
    """A map computed on an image squashed to the model's S x S input (the
    segmentation protocol's preprocessing; any grid: tokens, regions or pixels),
    carried back to the image's own ``image_size`` = (width, height), PIL's order:
    float64 [height, width], values kept (no normalisation), for display."""
    values = as_float64(heat)
    if values.ndim != 2:
        raise ValueError(f"a map is [height, width], got shape {tuple(values.shape)}")
    return resize(values, image_size)


def flat_overlay(image, spacing: int | None = None) -> np.ndarray:
    """The image greyed, faded and hatched: where a map is flat, no colour."""
    image = _rgb(image)
    grey = image.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    out = 0.35 * grey + 0.65 * 235.0
    spacing = spacing or max(6, min(image.shape[:2]) // 12)
    rows, columns = np.indices(image.shape[:2])
    out[(rows + columns) % spacing < max(1, spacing // 6)] = 90.0   # diagonal hatching
    return np.repeat(np.uint8(out + 0.5)[..., None], 3, axis=2)


@dataclass
class MapPanel:
    pixels: np.ndarray    # RGB uint8 at the image's size
    range: str            # the map's own range in its units: 'p_fine 1.0e-20 … 2.4e-07'
    flat: str             # 'flat: range 2.4e-07' when the range is negligible, else ''


def map_panel(image, heat, scale: MapScale, alpha: float = 0.5, shown=None) -> MapPanel:
    """A map over its image, honestly: `shown` (the map at the image's size; default:
    `heat` carried back by ``unsquash``) colour-mapped from its own min to its own
    max unless the range of `heat` (the map as computed) is negligible
    (``ranges.negligible``), then the image is greyed and hatched instead; with
    texts that say so, of `heat`."""
    image = _rgb(image)
    if negligible(heat, scale):
        return MapPanel(flat_overlay(image), range_text(heat, scale), flat_text(heat))
    shown = unsquash(heat if shown is None else shown, (image.shape[1], image.shape[0]))
    pixels = heatmap_overlay(image, shown, alpha)
    unseen = np.isnan(shown)   # outside a classification crop: the model never saw it
    pixels[unseen] = flat_overlay(image)[unseen]
    return MapPanel(pixels, range_text(heat, scale), "")


def annotate(image, lines) -> np.ndarray:
    """The image with text lines printed at its top left on a dark band (empty
    lines left out), sized to the image: an overlay file that says what it shows."""
    image = _rgb(image).copy()
    lines = [line.replace("…", "...") for line in lines if line]   # cv2's font is ASCII
    scale = max(0.35, image.shape[1] / 900)
    thickness = max(1, round(scale * 1.5))
    height = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1]
    step = int(height * 1.8)
    width = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for line in lines) if lines else 0
    band = image[: step * len(lines) + step // 2, : width + step]
    band[:] = (0.35 * band).astype(np.uint8)
    for index, line in enumerate(lines):
        cv2.putText(image, line, (step // 2, step * (index + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return image


def heatmap_overlay(image, heat, alpha: float = 0.5, colormap: int = cv2.COLORMAP_JET,
                    normalise: bool = True) -> np.ndarray:
    """Blend a colour-mapped heatmap (any size: resized bilinearly) over the image."""
    image = _rgb(image)
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float64)
    heat = heat.astype(np.float64)
    if normalise and not np.isnan(heat).all():
        low, high = np.nanmin(heat), np.nanmax(heat)
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    heat = np.nan_to_num(heat)
    heat = cv2.resize(np.clip(heat, 0, 1).astype(np.float32), (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_LINEAR)
    colored = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), colormap), cv2.COLOR_BGR2RGB)
    return np.uint8(np.clip((1 - alpha) * image + alpha * colored, 0, 255))


def mask_contours(image, mask, color=(0, 255, 0), thickness: int = 2) -> np.ndarray:
    """Outline the foreground of a binary mask (resized by nearest neighbour)."""
    image = _rgb(image).copy()
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    mask = cv2.resize(np.uint8(mask > 0), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, tuple(int(c) for c in color), thickness)
    return image


def draw_granularity(image, choice, split_sizes, region_size: int, patch: int, thickness: int = 1,
                     tint: float = 0.25, input_size: tuple[int, int] | None = None) -> np.ndarray:
    """The mixed-grained patches a router chose: each region of S x S tokens
    (token = `patch` pixels) is split into k x k cells, k = split_sizes[choice];
    cell borders are drawn and each region is tinted by its granularity
    (white: finest, then yellow, blue, red for coarser options).  input_size:
    (width, height) of the input the router saw when the image is shown at
    another size (e.g. carried back to its own aspect ratio): the grid is
    stretched onto the image as the squash stretched the image onto the grid."""
    image = _rgb(image).copy()
    choice = choice.detach().cpu().numpy() if isinstance(choice, torch.Tensor) else np.asarray(choice)
    width, height = input_size or (image.shape[1], image.shape[0])
    sx, sy = image.shape[1] / width, image.shape[0] / height
    region_px = region_size * patch
    if choice.shape[0] * region_px > height or choice.shape[1] * region_px > width:
        raise ValueError(f"region grid {choice.shape} of {region_px} px does not fit the image {(height, width)}")

    def box(y0, x0, y1, x1):   # input pixels [y0, y1) x [x0, x1) -> inclusive image corners
        return ((int(round(x0 * sx)), int(round(y0 * sy))),
                (int(round(x1 * sx)) - 1, int(round(y1 * sy)) - 1))

    overlay = image.copy()
    for ry in range(choice.shape[0]):
        for rx in range(choice.shape[1]):
            option = int(choice[ry, rx])
            color = GRANULARITY_COLORS[min(option, len(GRANULARITY_COLORS) - 1)]
            y0, x0 = ry * region_px, rx * region_px
            cv2.rectangle(overlay, *box(y0, x0, y0 + region_px, x0 + region_px), color, -1)
    image = np.uint8(np.clip((1 - tint) * image + tint * overlay, 0, 255))
    for ry in range(choice.shape[0]):
        for rx in range(choice.shape[1]):
            option = int(choice[ry, rx])
            k = int(split_sizes[option])
            cell = region_px / k
            color = GRANULARITY_COLORS[min(option, len(GRANULARITY_COLORS) - 1)]
            for i in range(k):
                for j in range(k):
                    y0, x0 = ry * region_px + i * cell, rx * region_px + j * cell
                    cv2.rectangle(image, *box(y0, x0, y0 + cell, x0 + cell), color, thickness)
    return image
