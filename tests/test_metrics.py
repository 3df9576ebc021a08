"""The segmentation protocol: hand-computed cases, scikit-learn's AP, degenerate
maps and masks, and invariance of the dataset scores to how they are split."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from dge_explain.metrics import aggregate, average_precision, normalise, score_image, two_channel_ap


def test_perfect_map():
    mask = torch.tensor([[0, 1], [0, 1]])
    score = score_image(torch.tensor([[0.1, 0.9], [0.4, 0.6]]), mask)
    assert (score.correct, score.labelled) == (4, 4)
    assert score.intersection == (2, 2) and score.union == (2, 2)
    assert score.ap == 1.0


def test_hand_computed_imperfect_map():
    # normalised map [[0, 1/4], [1/2, 1]] (exact in float32), mean 7/16 -> foreground: bottom row
    saliency = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    mask = torch.tensor([[0, 1], [1, 1]])
    score = score_image(saliency, mask)
    assert (score.correct, score.labelled) == (3, 4)                 # top-right missed
    assert score.intersection == (1, 2) and score.union == (2, 3)
    # (score, label) of the channel entries: background 1(1) 3/4(0) 1/2(0) 0(0);
    # foreground 0(0) 1/4(1) 1/2(1) 1(1).  Descending thresholds:
    # 1: tp 2 of 2 -> P 1, R 2/4;  3/4: no recall step;  1/2: tp 3 of 5 -> P 3/5, R 3/4;
    # 1/4: tp 4 of 6 -> P 2/3, R 1
    assert score.ap == pytest.approx(0.5 * 1 + 0.25 * 0.6 + 0.25 * (2 / 3), abs=1e-15)
    total = aggregate([score])
    assert total.accuracy == 0.75 and total.iou == (0.5, 2 / 3) and total.miou == pytest.approx(7 / 12)


@pytest.mark.parametrize("trial", range(20))
def test_average_precision_equals_sklearn(trial, generator):
    n = int(torch.randint(2, 400, (1,), generator=generator))
    labels = torch.rand(n, generator=generator) < 0.3
    labels[0] = True
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    if trial % 2:  # heavy ties
        scores = (scores * 5).floor() / 5
    expected = average_precision_score(labels.numpy(), scores.numpy())
    assert average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("trial", range(5))
def test_two_channel_ap_equals_the_protocol_with_sklearn(trial, generator):
    m = normalise(torch.rand(17, 23, generator=generator))
    if trial % 2:  # ties inside and across the two channels
        m = np.round(m * 4) / 4
    assert m.dtype == np.float32
    mask = torch.rand(17, 23, generator=generator) < 0.4
    one_hot = np.stack([~mask.numpy(), mask.numpy()]).reshape(-1)
    predicted = np.stack([1 - m, m]).reshape(-1)
    assert two_channel_ap(m, mask) == pytest.approx(average_precision_score(one_hot, predicted), abs=1e-12)


@pytest.mark.parametrize("saliency", [torch.full((8, 8), 3.0), torch.full((8, 8), float("nan")),
                                      torch.zeros(8, 8)])
@pytest.mark.parametrize("mask", [torch.zeros(8, 8), torch.ones(8, 8), torch.eye(8)])
def test_constant_or_nan_maps_and_degenerate_masks_give_numbers(saliency, mask):
    score = score_image(saliency, mask)
    total = aggregate([score])
    for value in (score.ap, total.accuracy, total.miou, total.map, *total.iou):
        assert math.isfinite(value)
    assert score.correct == int((mask == 0).sum())       # a constant map predicts background


def test_all_background_and_all_foreground_masks_with_a_real_map(generator):
    saliency = torch.rand(10, 10, generator=generator)
    for mask in (torch.zeros(10, 10), torch.ones(10, 10)):
        score = score_image(saliency, mask)
        assert 0.0 <= score.ap <= 1.0
        assert score.union[0 if mask.sum() == 0 else 1] == 100


def test_dataset_scores_do_not_depend_on_the_split(generator):
    scores = [score_image(torch.rand(12, 9, generator=generator), torch.rand(12, 9, generator=generator) < 0.5)
              for _ in range(30)]
    whole = aggregate(scores)
    assert aggregate(scores[:11] + scores[11:]) == whole
    total = sum(s.correct for s in scores) / sum(s.labelled for s in scores)
    assert whole.accuracy == total
    assert whole.map == sum(s.ap for s in scores) / 30


def test_random_maps_score_about_fifty_percent(generator):
    scores = [score_image(torch.rand(64, 64, generator=generator), torch.rand(64, 64, generator=generator) < 0.3)
              for _ in range(50)]
    total = aggregate(scores).as_percent()
    assert abs(total["Accuracy"] - 50) < 1 and abs(total["mAP"] - 50) < 1


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"map \(4, 4\) and mask \(4, 5\) differ in shape"):
        score_image(torch.zeros(4, 4), torch.zeros(4, 5))
