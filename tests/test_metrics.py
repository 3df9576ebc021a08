"""The segmentation protocol of Chefer et al.: hand-computed cases (constant, NaN
and inf maps, all-background and all-foreground masks), an independent
re-implementation written here from the protocol's description (scikit-learn's
AP, their histogram-based IoU) compared per image with the compiled scorer and the
reference, and the dataset aggregation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from dge_explain.evaluation.metrics import EPS, aggregate, pr_curve, score_image, score_maps
from dge_explain.ops import reference, segmentation_scores, use_backend

from conftest import poisoned_outputs


def protocol(saliency: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, tuple, tuple, float]:
    """The protocol step by step as described (docs/explainers-and-protocols.md §1),
    written independently of the package: (correct, labelled, intersection, union, AP)."""
    r = (saliency - saliency.min()) / (saliency.max() - saliency.min())    # in the map's dtype
    mean = math.fsum(r.double().flatten().tolist()) / r.numel()            # the mean, in float64
    res_1 = (r.double() > mean).to(r.dtype)                                 # taken before NaN -> 0
    res_0 = (r.double() <= mean).to(r.dtype)
    ap_1, ap_0 = r.clone(), 1 - r
    for channel in (res_1, res_0, ap_1, ap_0):
        channel[channel != channel] = 0
    output = torch.stack([res_0, res_1])                                     # (background, foreground)
    predict = torch.max(output, 0).indices.numpy() + 1                       # ties: the first, background
    target = mask.long().numpy() + 1
    labelled = int(np.sum(target > 0))
    correct = int(np.sum((predict == target) * (target > 0)))
    intersection = predict * (predict == target)
    area_inter = np.histogram(intersection, bins=2, range=(1, 2))[0]
    area_union = np.histogram(predict, bins=2, range=(1, 2))[0] + np.histogram(target, bins=2, range=(1, 2))[0] \
        - area_inter
    one_hot = np.stack([~mask.numpy(), mask.numpy()]).reshape(-1)
    scores = torch.stack([ap_0, ap_1]).numpy().reshape(-1)
    ap = float(np.nan_to_num(average_precision_score(one_hot, scores)))
    return correct, labelled, tuple(int(v) for v in area_inter), tuple(int(v) for v in area_union), ap


def _as_tuple(score):
    return score.correct, score.labelled, score.intersection, score.union, score.ap


def _structured_maps(generator, dtype):
    """Maps of the kinds explainers make: bilinear upsamplings of coarse grids
    (gating, GradCAM), uniform noise (random), heavy ties, saturated probabilities
    (values crowding within 1e-12 of 1), ReLU zeros, degenerate and non-finite maps."""
    size = (48, 40)
    grid = torch.rand(6, 1, 3, 5, generator=generator, dtype=torch.float64)
    up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = [up[0], up[1],
            torch.rand(size, generator=generator, dtype=torch.float64),
            (torch.rand(size, generator=generator, dtype=torch.float64) * 4).floor(),
            1 - torch.rand(size, generator=generator, dtype=torch.float64) * 1e-12,
            (up[2] - 0.5).clamp(min=0),
            torch.full(size, 3.0, dtype=torch.float64),
            torch.zeros(size, dtype=torch.float64)]
    nan, inf, neg = up[3].clone(), up[4].clone(), up[5].clone()
    nan[5, 7] = float("nan")
    inf[1, 2] = float("inf")
    neg[3, 3] = -float("inf")
    return [m.to(dtype) for m in maps + [nan, inf, neg]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_and_reference_scores_equal_an_independent_implementation(dtype, generator):
    maps = _structured_maps(generator, dtype)
    masks = [torch.rand(maps[0].shape, generator=generator) < p for p in (0.3, 0.5, 0.1)]
    masks += [torch.zeros(maps[0].shape, dtype=torch.bool), torch.ones(maps[0].shape, dtype=torch.bool)]
    stacked_maps = torch.stack([m for m in maps for _ in masks])
    stacked_masks = torch.stack([y for _ in maps for y in masks])
    compiled = score_maps(stacked_maps, stacked_masks)
    with use_backend("reference"):
        oracle = score_maps(stacked_maps, stacked_masks)
    for i, (saliency, mask) in enumerate(zip(stacked_maps, stacked_masks)):
        expected = protocol(saliency, mask)
        for score, _ in (compiled[i], oracle[i]):
            got = _as_tuple(score)
            assert got[:4] == expected[:4], (i, got, expected)
            assert got[4] == pytest.approx(expected[4], abs=1e-9), (i, got[4], expected[4])
        np.testing.assert_array_equal(compiled[i][1], oracle[i][1])
        assert compiled[i][1].sum() == mask.numel()


@pytest.mark.parametrize("trial", range(6))
def test_random_shapes_and_threads(trial, generator):
    height, width = (int(v) for v in torch.randint(1, 70, (2,), generator=generator))
    count = int(torch.randint(1, 9, (1,), generator=generator))
    dtype = (torch.float32, torch.float64)[trial % 2]
    maps = torch.rand(count, height, width, generator=generator, dtype=dtype)
    if trial % 3 == 2:
        maps = (maps * 3).round()       # ties within and across the two channels
    masks = torch.rand(count, height, width, generator=generator) < 0.4
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = score_maps(maps, masks)
        torch.set_num_threads(max(2, threads))
        several = score_maps(maps, masks)
    finally:
        torch.set_num_threads(threads)
    for i in range(count):
        expected = protocol(maps[i], masks[i])
        assert _as_tuple(one[i][0])[:4] == expected[:4]
        assert one[i][0].ap == pytest.approx(expected[4], abs=1e-9)
        assert _as_tuple(one[i][0]) == _as_tuple(several[i][0])


def test_constant_and_nan_maps_are_all_background_with_ap_one_half():
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool)      # 3 of 6 foreground
    for saliency in (torch.full((2, 3), 7.0), torch.zeros(2, 3),
                     torch.tensor([[0.1, float("nan"), 0.3], [0.4, 0.5, 0.6]])):
        score = score_image(saliency, mask)
        # all background: 3 correct; background IoU 3 / 6, foreground 0 / 3
        assert (score.correct, score.labelled) == (3, 6)
        assert score.intersection == (3, 0) and score.union == (6, 3)
        assert score.ap == 0.5


def test_hand_computed_map_with_an_all_background_and_an_all_foreground_mask():
    # R = [[0, 1/4], [1/2, 1]] (exact in float32), mean 7/16: foreground = bottom row
    saliency = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    background = score_image(saliency, torch.zeros(2, 2, dtype=torch.bool))
    assert (background.correct, background.intersection, background.union) == (2, (2, 0), (4, 2))
    # entries (score, positive): channel 1 - R on background: 1, 3/4, 1/2, 0, all positive;
    # channel R: 0, 1/4, 1/2, 1, all negative.  Thresholds 1: tp 1 of 2; 3/4: 2 of 3;
    # 1/2: 3 of 5; 1/4: no recall step; 0: 4 of 8.  AP = (1/2 + 2/3 + 3/5 + 1/2) / 4
    assert background.ap == pytest.approx((1 / 2 + 2 / 3 + 3 / 5 + 1 / 2) / 4, abs=1e-15)
    foreground = score_image(saliency, torch.ones(2, 2, dtype=torch.bool))
    assert (foreground.correct, foreground.intersection, foreground.union) == (2, (0, 2), (2, 4))
    # channel R positive: 1, 1/2, 1/4, 0 against 1 - R negative: 1, 3/4, 1/2, 0.
    # Thresholds 1: 1 of 2; 3/4: no recall step; 1/2: 2 of 5; 1/4: 3 of 6; 0: 4 of 8
    assert foreground.ap == pytest.approx((1 / 2 + 2 / 5 + 3 / 6 + 4 / 8) / 4, abs=1e-15)


def test_hand_computed_imperfect_map():
    saliency = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    mask = torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)
    score = score_image(saliency, mask)
    assert (score.correct, score.labelled) == (3, 4)                 # top-right missed
    assert score.intersection == (1, 2) and score.union == (2, 3)
    # (score, label): background channel 1(1) 3/4(0) 1/2(0) 0(0); foreground 0(0) 1/4(1) 1/2(1) 1(1).
    # 1: tp 2 of 2 -> P 1, R 2/4;  3/4: no recall step;  1/2: tp 3 of 5;  1/4: tp 4 of 6
    assert score.ap == pytest.approx(0.5 * 1 + 0.25 * 0.6 + 0.25 * (2 / 3), abs=1e-15)
    total = aggregate([score])
    assert total.accuracy == pytest.approx(0.75, abs=1e-15)
    assert total.iou == pytest.approx((0.5, 2 / 3), abs=1e-15) and total.miou == pytest.approx(7 / 12)


def test_an_infinite_pixel_keeps_the_rest_at_zero():
    # +inf: max = inf, so (R - min) / inf is 0 on finite pixels and NaN on the inf pixel;
    # the mean is NaN, so both binary channels are empty: all background
    saliency = torch.tensor([[0.0, 1.0], [float("inf"), 2.0]])
    mask = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)
    score = score_image(saliency, mask)
    assert score.intersection == (3, 0) and score.union == (4, 1)
    # AP channels: R = 0 everywhere; 1 - R = 1 on the three finite pixels, 0 on the inf pixel.
    # Entries scoring 1: the background channel of pixels (0,1) and (1,1) (positive) and of
    # (0,0) (negative): tp 2 of 3.  Score 0: everything else, tp 4 of 8.
    assert score.ap == pytest.approx((2 * (2 / 3) + 2 * (4 / 8)) / 4, abs=1e-15)
    assert score_image(torch.tensor([[0.0, -float("inf")], [1.0, 2.0]]), mask).ap == 0.5  # all NaN


def test_saturated_probabilities_keep_their_order_in_float64():
    """Router probabilities at logit margins of 18-34 (layer 1 of the shipped model):
    float32 rounds every one to 1.0, a constant map (AP 0.5, all background);
    in float64 they keep the margins' order (ties only where 1 - p is a few units
    of 2^-53 apart) and segment."""
    generator = torch.Generator().manual_seed(0)
    margin = 18 + 16 * torch.rand(64, 64, generator=generator, dtype=torch.float64)
    mask = margin > 20
    p_fine = torch.sigmoid(margin)
    in_margin_order = p_fine.flatten()[torch.argsort(margin.flatten())]
    assert (in_margin_order.diff() >= 0).all() and in_margin_order.unique().numel() > 1000
    saturated = score_image(p_fine.float(), mask)
    assert saturated.ap == 0.5 and saturated.intersection[1] == 0
    resolved = score_image(p_fine, mask)
    assert resolved.ap > 0.75 and resolved.correct / resolved.labelled > 0.75


def test_every_output_is_written(generator):
    maps = torch.rand(5, 9, 7, generator=generator)
    masks = torch.rand(5, 9, 7, generator=generator) < 0.5
    with poisoned_outputs():
        counts, ap, histograms = segmentation_scores(maps, masks, 10)
    assert (counts >= 0).all() and torch.isfinite(ap).all() and (histograms.sum((1, 2)) == 63).all()
    counts, ap, histograms = segmentation_scores(maps[:0], masks[:0], 10)
    assert counts.shape == (0, 3) and ap.shape == (0,) and histograms.shape == (0, 2, 10)


def test_reference_average_precision_equals_sklearn(generator):
    for trial in range(10):
        n = int(torch.randint(2, 300, (1,), generator=generator))
        labels = torch.rand(n, generator=generator) < 0.3
        labels[0] = True
        scores = torch.rand(n, generator=generator, dtype=torch.float64)
        if trial % 2:
            scores = (scores * 5).floor() / 5
        expected = average_precision_score(labels.numpy(), scores.numpy())
        assert reference._average_precision(scores.numpy(), labels.numpy()) == pytest.approx(expected, abs=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"map \(4, 4\) and mask \(4, 5\) differ in shape"):
        score_image(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"maps must be float32 or float64, got torch.float16"):
        segmentation_scores(torch.zeros(1, 2, 2, dtype=torch.float16), torch.zeros(1, 2, 2, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"maps have no pixels"):
        segmentation_scores(torch.zeros(1, 0, 2), torch.zeros(1, 0, 2, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"masks \(1, 2, 3\) and maps \(1, 2, 2\) differ"):
        segmentation_scores(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3, dtype=torch.bool), 4)


def test_dataset_scores_do_not_depend_on_the_split(generator):
    maps = torch.rand(30, 12, 9, generator=generator)
    masks = torch.rand(30, 12, 9, generator=generator) < 0.5
    scores = [s for s, _ in score_maps(maps, masks)]
    whole = aggregate(scores)
    assert aggregate(scores[:11] + scores[11:]) == whole
    correct, labelled = sum(s.correct for s in scores), sum(s.labelled for s in scores)
    assert whole.accuracy == correct / (EPS + labelled)
    assert whole.map == pytest.approx(sum(s.ap for s in scores) / 30, abs=1e-15)
    assert aggregate(scores[:1]).iou[1] == scores[0].intersection[1] / (EPS + scores[0].union[1])


def test_random_maps_score_about_fifty_percent_and_the_pr_curve_is_flat(generator):
    maps = torch.rand(50, 64, 64, generator=generator)
    masks = torch.rand(50, 64, 64, generator=generator) < 0.3
    scored = score_maps(maps, masks)
    total = aggregate([s for s, _ in scored]).as_percent()
    assert abs(total["Accuracy"] - 50) < 1 and abs(total["mAP"] - 50) < 1
    recall, precision = pr_curve(np.sum([h for _, h in scored], axis=0))
    assert recall[-1] == pytest.approx(1.0) and np.all(np.abs(precision[5:] - 0.5) < 0.02)
