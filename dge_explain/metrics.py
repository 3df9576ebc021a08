"""Soft-segmentation scores, with the ImageNet-segmentation protocol of Chefer et
al. (CVPR 2021) that the DGE paper's Tables 5 and 6 use.

Per image, for a map m and a binary mask y (same size):
  1. NaNs become 0; m is min-max normalised to [0, 1] (a constant map becomes 0);
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
share one threshold); ``two_channel_ap`` needs a single sort of m thanks to the
symmetry of the two channels.  The tests check both against sklearn.
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
    bins = foreground.size
    # score s >= t: channel 1 takes bins with m >= t, channel 0 bins with m <= 1 - t
    tp = np.cumsum(foreground[::-1]) + np.cumsum(background)
    predicted = np.cumsum((foreground + background)[::-1]) + np.cumsum(foreground + background)
    total = foreground.sum() + background.sum()
    precision = tp / np.maximum(predicted, 1)
    recall = tp / max(total, 1)
    return recall[: bins], precision[: bins]


def normalise(saliency) -> np.ndarray:
    """Min-max to [0, 1] in float64; NaN -> 0 first; a constant map becomes all zeros."""
    m = np.nan_to_num(_as_numpy(saliency).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = m.min(), m.max()
    return (m - low) / (high - low) if high > low else np.zeros_like(m)


def _as_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _ap_of_descending(scores: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's AP for scores already sorted in descending order."""
    positives = labels.sum()
    if positives == 0:
        return 0.0
    # last index of every run of tied scores: one threshold each
    ends = np.flatnonzero(np.diff(scores, append=-np.inf) != 0)
    true_positives = np.cumsum(labels, dtype=np.float64)[ends]
    precision = true_positives / (ends + 1)
    recall_step = np.diff(true_positives, prepend=0.0) / positives
    return float((recall_step * precision).sum())


def average_precision(scores, labels) -> float:
    """sklearn.metrics.average_precision_score(labels, scores) for 1-D inputs:
    the sum over distinct thresholds of (recall step) * precision."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    return _ap_of_descending(scores[order], labels[order])


def two_channel_ap(m, mask) -> float:
    """AP of the flattened channels (1 - m, m) against (1 - y, y).

    One sort of m serves both channels: m in descending order is the foreground
    channel, 1 - m in descending order is m ascending; the two descending runs
    are merged by a stable (timsort) pass that costs about one linear scan.
    Tied scores form one threshold, so the order inside a tie does not matter."""
    values = _as_numpy(m).astype(np.float64).ravel()
    labels = _as_numpy(mask).astype(bool).ravel()
    order = np.argsort(values)
    ascending, y = values[order], labels[order]
    merged_scores = np.concatenate([ascending[::-1], 1.0 - ascending])
    merged_labels = np.concatenate([y[::-1], ~y])
    merge = np.argsort(-merged_scores, kind="stable")
    return _ap_of_descending(merged_scores[merge], merged_labels[merge])


def score_image(saliency, mask) -> ImageScore:
    """saliency [H, W] (any real values), mask [H, W] (bool or 0/1); tensors or arrays."""
    saliency, foreground = _as_numpy(saliency), _as_numpy(mask).astype(bool)
    if saliency.shape != foreground.shape:
        raise ValueError(f"map {tuple(saliency.shape)} and mask {tuple(foreground.shape)} differ in shape")
    m = normalise(saliency)
    predicted = m > m.mean()
    correct = int(np.count_nonzero(predicted == foreground))
    intersection = (int(np.count_nonzero(~predicted & ~foreground)),
                    int(np.count_nonzero(predicted & foreground)))
    union = (int(np.count_nonzero(~predicted | ~foreground)), int(np.count_nonzero(predicted | foreground)))
    return ImageScore(correct, foreground.size, intersection, union, two_channel_ap(m, foreground))


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
