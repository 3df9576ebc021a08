"""Soft-segmentation scores, with the ImageNet-segmentation protocol of Chefer et
al. (CVPR 2021) that the DGE paper's Tables 5 and 6 use.

Per image, for a map m and a binary mask y (same size):
  1. NaNs become 0; m is min-max normalised to [0, 1] in float32, the precision of
     Chefer et al.'s code (a constant map becomes 0);
  2. binarised at its mean: foreground where m > mean(m); prediction = two
     channels (background, foreground);
  3. pixel accuracy counts: correct pixels and labelled pixels (all pixels);
  4. per class c in {background, foreground}: intersection and union areas;
  5. AP = sklearn's average_precision_score of the two soft channels
     (1 - m, m) flattened against the one-hot mask (y = 0 -> background).
Dataset scores: accuracy = sum correct / sum labelled; IoU per class = sum
intersection / sum union (summed over all images); mIoU = mean of the two IoUs;
mAP = mean of the per-image APs.  Integer sums and per-image APs make the result
identical whatever the batching or the split across processes.

``average_precision`` reproduces sklearn's definition exactly (tied scores
share one threshold) from the sorted positive and negative scores; the tests
check it against sklearn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


HISTOGRAM_BINS = 100


@dataclass(frozen=True)
class ImageScore:
    correct: int
    labelled: int
    intersection: tuple[int, int]
    union: tuple[int, int]
    ap: float


def histograms(m: np.ndarray, foreground: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """[2, bins] counts of the normalised map's values over foreground (row 0) and
    background (row 1) pixels: enough to draw dataset precision-recall curves."""
    index = np.minimum((m * bins).astype(np.int64), bins - 1)
    return np.stack([np.bincount(index[foreground], minlength=bins),
                     np.bincount(index[~foreground], minlength=bins)])


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


def normalise(saliency) -> np.ndarray:
    """Min-max to [0, 1] in float32 (the protocol's precision); NaN -> 0 first; a
    constant map becomes all zeros."""
    m = np.nan_to_num(_as_numpy(saliency).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = m.min(), m.max()
    return (m - low) / (high - low) if high > low else np.zeros_like(m)


def _as_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two ascending arrays merged (a stable sort finds the two runs: ~linear)."""
    return np.sort(np.concatenate([a, b]), kind="stable")


def _ap_of_sorted(positive: np.ndarray, negative: np.ndarray) -> float:
    """sklearn's AP from the ascending scores of the positive and of the negative
    entries.  Distinct positive scores are the thresholds where recall moves; at
    each, precision counts every entry scoring at least that much (ties
    included): exactly sklearn's sum over distinct thresholds."""
    if positive.size == 0:
        return 0.0
    starts = np.flatnonzero(np.concatenate([[True], positive[1:] != positive[:-1]]))  # tied runs
    true_positives = (positive.size - starts).astype(np.float64)      # entries >= threshold
    false_positives = negative.size - np.searchsorted(negative, positive[starts], side="left")
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / positive.size
    # thresholds descend from the last run to the first: recall grows stepwise
    recall_step = np.diff(recall[::-1], prepend=0.0)
    return float((recall_step * precision[::-1]).sum())


def average_precision(scores, labels) -> float:
    """sklearn.metrics.average_precision_score(labels, scores) for 1-D inputs."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=bool)
    return _ap_of_sorted(np.sort(scores[labels]), np.sort(scores[~labels]))


def two_channel_ap(m, mask) -> float:
    """AP of the flattened channels (1 - m, m) against (1 - y, y).  The positives
    are m on foreground pixels and 1 - m on background pixels, the negatives the
    other two: two sorts of the pixel values serve all four, merged in linear
    time, and no two-channel array is built."""
    values = _as_numpy(m).ravel()
    foreground = _as_numpy(mask).astype(bool).ravel()
    inside, outside = np.sort(values[foreground]), np.sort(values[~foreground])
    one = values.dtype.type(1)
    return _ap_of_sorted(_merge(inside, (one - outside)[::-1]), _merge(outside, (one - inside)[::-1]))


def score_image(saliency, mask, with_histogram: bool = False):
    """saliency [H, W] (any real values), mask [H, W] (bool or 0/1); tensors or arrays.
    Returns the ImageScore, or (ImageScore, histograms) with with_histogram."""
    saliency, foreground = _as_numpy(saliency), _as_numpy(mask).astype(bool)
    if saliency.shape != foreground.shape:
        raise ValueError(f"map {tuple(saliency.shape)} and mask {tuple(foreground.shape)} differ in shape")
    m = normalise(saliency)
    predicted = m > m.mean()
    correct = int(np.count_nonzero(predicted == foreground))
    intersection = (int(np.count_nonzero(~predicted & ~foreground)),
                    int(np.count_nonzero(predicted & foreground)))
    union = (int(np.count_nonzero(~predicted | ~foreground)), int(np.count_nonzero(predicted | foreground)))
    score = ImageScore(correct, foreground.size, intersection, union, two_channel_ap(m, foreground))
    return (score, histograms(m, foreground)) if with_histogram else score


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
    iou = tuple(i / u if u > 0 else 0.0 for i, u in zip(inter, union))
    return DatasetScore(len(scores), correct / labelled, iou, sum(iou) / 2,
                        sum(s.ap for s in scores) / len(scores))
