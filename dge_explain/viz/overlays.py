"""Heatmaps, router granularity grids and mask contours over an image."""
from __future__ import annotations

import cv2
import numpy as np
import torch

GRANULARITY_COLORS = ((255, 255, 255), (255, 200, 0), (0, 160, 255), (255, 60, 60))


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
    return image


def heatmap_overlay(image, heat, alpha: float = 0.5, colormap: int = cv2.COLORMAP_JET,
                    normalise: bool = True) -> np.ndarray:
    """Blend a colour-mapped heatmap (any size: resized bilinearly) over the image."""
    image = _rgb(image)
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float64)
    heat = np.nan_to_num(heat.astype(np.float64))
    if normalise:
        span = heat.max() - heat.min()
        heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
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
                     tint: float = 0.25) -> np.ndarray:
    """The mixed-grained patches a router chose: each region of S x S tokens
    (token = `patch` pixels) is split into k x k cells, k = split_sizes[choice];
    cell borders are drawn and each region is tinted by its granularity
    (white: finest, then yellow, blue, red for coarser options)."""
    image = _rgb(image).copy()
    choice = choice.detach().cpu().numpy() if isinstance(choice, torch.Tensor) else np.asarray(choice)
    region_px = region_size * patch
    if choice.shape[0] * region_px > image.shape[0] or choice.shape[1] * region_px > image.shape[1]:
        raise ValueError(f"region grid {choice.shape} of {region_px} px does not fit the image {image.shape[:2]}")
    overlay = image.copy()
    for ry in range(choice.shape[0]):
        for rx in range(choice.shape[1]):
            option = int(choice[ry, rx])
            color = GRANULARITY_COLORS[min(option, len(GRANULARITY_COLORS) - 1)]
            y0, x0 = ry * region_px, rx * region_px
            cv2.rectangle(overlay, (x0, y0), (x0 + region_px - 1, y0 + region_px - 1), color, -1)
    image = np.uint8(np.clip((1 - tint) * image + tint * overlay, 0, 255))
    for ry in range(choice.shape[0]):
        for rx in range(choice.shape[1]):
            option = int(choice[ry, rx])
            k = int(split_sizes[option])
            cell = region_px / k
            color = GRANULARITY_COLORS[min(option, len(GRANULARITY_COLORS) - 1)]
            for i in range(k):
                for j in range(k):
                    y0 = int(round(ry * region_px + i * cell))
                    x0 = int(round(rx * region_px + j * cell))
                    y1 = int(round(ry * region_px + (i + 1) * cell)) - 1
                    x1 = int(round(rx * region_px + (j + 1) * cell)) - 1
                    cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness)
    return image
