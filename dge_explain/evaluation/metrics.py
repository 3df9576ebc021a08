"""Soft-segmentation scores: the ImageNet-segmentation protocol of Chefer et al.
(CVPR 2021), which the DGE paper's Tables 5 and 6 use, reproduced step by step.

Per image, for a map R and a binary mask y of the same size:
  1. R = (R - min R) / (max R - min R), in the map's own precision (a constant
     map gives 0/0 = NaN everywhere; a NaN pixel makes min and max NaN, so the
     whole map; +inf leaves NaN at that pixel and 0 elsewhere);
  2. binary channels: foreground = R > mean(R), background = R <= mean(R), taken
     *before* NaNs are replaced (so a NaN pixel is in neither channel); the mean
     is computed in float64 (their code takes a float32 mean, whose last bit
     depends on the device's summation order);
  3. AP channels: R and 1 - R; then every NaN in all four channels becomes 0;
  4. prediction = argmax over (background, foreground), a tie choosing background:
     pixel accuracy counts (correct, labelled = all pixels), intersection and
     union per class;
  5. AP = scikit-learn's ``average_precision_score`` of the flattened AP
     channels (1 - R, R) against the one-hot mask (2 x H x W entries).
A constant or NaN-holding map therefore predicts all background and scores
AP = 0.5 exactly (all scores 0, half the entries positive).
Dataset scores (``aggregate``): accuracy = sum correct / (eps + sum labelled),
IoU per class = sum intersection / (eps + sum union) over all images, mIoU =
their mean, mAP = mean of the per-image APs (eps = 2.2e-16 as in their code).
Integer sums and per-image APs make the result identical whatever the batching
or the split across processes.

The maps of a batch are scored by one compiled call (``ops.segmentation_scores``,
exact AP from one radix sort per map); ``ops.reference.segmentation_scores`` is
the step-by-step oracle, and the tests check both against an independent
re-implementation with scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dge_explain import ops

HISTOGRAM_BINS = 100
EPS = float(np.spacing(1, dtype=np.float64))


@dataclass(frozen=True)
class ImageScore:
    correct: int
    labelled: int
    intersection: tuple[int, int]   # (background, foreground)
    union: tuple[int, int]
    ap: float

    def to_record(self) -> dict:
        return {"correct": self.correct, "labelled": self.labelled,
                "intersection": list(self.intersection), "union": list(self.union), "ap": self.ap}

    @classmethod
    def from_record(cls, record: dict) -> "ImageScore":
        return cls(int(record["correct"]), int(record["labelled"]), tuple(record["intersection"]),
                   tuple(record["union"]), float(record["ap"]))


def pr_curve(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of the two-channel protocol from summed histograms,
    thresholds at the bin edges: channel 1 scores m (positive on foreground),
    channel 0 scores 1 - m (positive on background)."""
    foreground, background = np.asarray(hist, dtype=np.float64)
    # score s >= t: channel 1 takes bins with m >= t, channel 0 bins with m <= 1 - t
    tp = np.cumsum(foreground[::-1]) + np.cumsum(background)
    predicted = np.cumsum((foreground + background)[::-1]) + np.cumsum(foreground + background)
    total = foreground.sum() + background.sum()
    precision = tp / np.maximum(predicted, 1)
    recall = tp / max(total, 1)
    return recall, precision


def score_maps(maps, masks) -> list[tuple[ImageScore, np.ndarray]]:
    """(ImageScore, histograms [2, HISTOGRAM_BINS]) of every map [M, H, W] (float32
    or float64; other dtypes as float32) against its mask [M, H, W], in one
    compiled call; the histograms count the normalised map's values over the
    mask's foreground (row 0) and background (row 1), for precision-recall curves."""
    maps, masks = torch.as_tensor(maps), torch.as_tensor(masks)
    if tuple(maps.shape) != tuple(masks.shape):
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    counts, ap, hist = ops.segmentation_scores(maps, masks.bool(), HISTOGRAM_BINS)
    pixels = maps.shape[1] * maps.shape[2]
    scores = []
    for (hits, predicted, foreground), value, histogram in zip(counts.tolist(), ap.tolist(), hist.numpy()):
        either = predicted + foreground - hits   # predicted or mask foreground
        misses = pixels - either                 # background predicted on background
        scores.append((ImageScore(hits + misses, pixels, (misses, hits), (pixels - hits, either), value),
                       histogram))
    return scores


def score_image(saliency, mask, with_histogram: bool = False):
    """saliency [H, W] (any real values), mask [H, W] (bool or 0/1); tensors or arrays.
    Returns the ImageScore, or (ImageScore, histograms) with with_histogram."""
    saliency, mask = torch.as_tensor(np.asarray(saliency) if not isinstance(saliency, torch.Tensor)
                                     else saliency), torch.as_tensor(mask)
    if saliency.shape != mask.shape:
        raise ValueError(f"map {tuple(saliency.shape)} and mask {tuple(mask.shape)} differ in shape")
    score, histogram = score_maps(saliency[None], mask[None])[0]
    return (score, histogram) if with_histogram else score


@dataclass(frozen=True)
class DatasetScore:
    images: int
    accuracy: float
    iou: tuple[float, float]
    miou: float
    map: float

    def as_percent(self) -> dict[str, float]:
        return {"Accuracy": 100 * self.accuracy, "mAP": 100 * self.map, "mIoU": 100 * self.miou}


def aggregate(scores: list[ImageScore]) -> DatasetScore:
    """Dataset scores from per-image scores, given in dataset order."""
    if not scores:
        raise ValueError("no image scores to aggregate")
    correct = sum(s.correct for s in scores)
    labelled = sum(s.labelled for s in scores)
    inter = [sum(s.intersection[c] for s in scores) for c in (0, 1)]
    union = [sum(s.union[c] for s in scores) for c in (0, 1)]
    iou = tuple(i / (EPS + u) for i, u in zip(inter, union))
    return DatasetScore(len(scores), correct / (EPS + labelled), iou, float(np.mean(iou)),
                        float(np.mean([s.ap for s in scores])))
