"""Honest pictures: every map drawn shows its own range in its units, a map whose
range is negligible is marked flat (greyed, hatched) instead of stretched into
blobs, images and maps keep the image's aspect ratio, and `figures --run`
draws what a perturbation run supports."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dge_explain.cli import main
from dge_explain.data import ImagenetSegMat, MaskFolder, Preprocessing, segmentation_dataset
from dge_explain.evaluation.segmentation import evaluate
from dge_explain.explainers import GatingMaps, RandomMaps, build_explainers
from dge_explain.viz.figures import collect_maps, figures_for_run, granularity_grid, map_grid
from dge_explain.evaluation.perturbation import FRACTIONS, write_outputs
from dge_explain.viz import (NEGLIGIBLE, draw_granularity, flat_text, map_panel, map_scale, unsquash,
                             negligible, range_text, value_range)

from conftest import shared_file, shared_home
from helpers import small_vit

SMALL = Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0).for_segmentation()


def _tiny_p_fine():
    """Layer 12's p_fine on the shipped model: numerical noise around 1e-19 ... 1e-5."""
    values = np.full((16, 16), 1e-19)
    values[4:8, 4:8] = 1e-5
    return values


# ---------------------------------------------------------------- what counts as flat

def test_a_negligible_range_is_below_1_256_of_the_kinds_nominal_scale():
    p_fine = map_scale("layer12")
    assert (p_fine.units, p_fine.nominal) == ("p_fine", 1.0)
    assert negligible(_tiny_p_fine(), p_fine)
    assert range_text(_tiny_p_fine(), p_fine) == "p_fine 1.0e-19 … 1.0e-05"
    assert flat_text(_tiny_p_fine()) == "flat: range 1.0e-05"
    # the boundary: one level of an 8-bit colour map over the nominal scale
    assert not negligible(np.array([[0.5, 0.5 + NEGLIGIBLE]]), p_fine)
    assert negligible(np.array([[0.5, 0.5 + 0.999 * NEGLIGIBLE]]), p_fine)
    margin = map_scale("layer12-margin")
    assert margin.units == "logits"
    assert negligible(np.array([[-30.0, -30.003]]), margin) and not negligible(np.array([[-30.0, -29.5]]), margin)
    assert range_text(np.array([[-30.0, -29.5]]), margin) == "logits -30 … -29.5"
    cam = map_scale("gradcam")
    assert (cam.units, cam.nominal) == ("CAM", 1.0) and map_scale("ablationcam") == cam
    assert negligible(np.zeros((4, 4)), cam) and flat_text(np.zeros((4, 4))) == "flat: range 0"
    assert range_text(np.array([[0.0, 1.0]]), cam) == "CAM 0 … 1"
    assert map_scale("layer3-density").nominal == 1.0 and map_scale("random").nominal == 1.0


def test_maps_without_a_fixed_scale_are_flat_relative_to_their_own_peak():
    rollout = map_scale("rollout")
    assert rollout.nominal is None and map_scale("relevance").nominal is None
    assert map_scale("no-such-map").nominal is None
    assert not negligible(np.array([[0.0020, 0.0021]]), rollout)   # 5 % of its peak: varies
    assert negligible(np.array([[1.0, 1.0001]]), rollout)          # 0.01 % of its peak: flat


def test_nan_is_ignored_and_a_map_without_a_number_is_flat():
    values = np.array([[np.nan, 0.2], [0.7, 0.4]])
    assert value_range(values) == (0.2, 0.7) and not negligible(values, map_scale("layer1"))
    empty = np.full((3, 3), np.nan)
    assert negligible(empty, map_scale("layer1")) and flat_text(empty) == "flat: no value"
    assert range_text(empty, map_scale("layer1")) == "p_fine no value (all NaN)"
    assert negligible(torch.full((2, 2), 0.3, dtype=torch.float64), map_scale("rollout"))


# ---------------------------------------------------------------- drawing

def test_a_flat_map_is_greyed_and_hatched_not_stretched():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)
    flat = map_panel(image, _tiny_p_fine(), map_scale("layer12"))
    assert flat.flat == "flat: range 1.0e-05" and flat.range == "p_fine 1.0e-19 … 1.0e-05"
    assert flat.pixels.shape == (30, 60, 3)
    assert (flat.pixels[..., 0] == flat.pixels[..., 1]).all() and (flat.pixels[..., 1] == flat.pixels[..., 2]).all()
    hatched = flat.pixels[..., 0] == 90
    assert 0.1 < hatched.mean() < 0.4, "diagonal hatching over part of the panel"
    varying = map_panel(image, np.linspace(0, 1, 16 * 16).reshape(16, 16), map_scale("layer8"))
    assert varying.flat == "" and varying.range == "p_fine 0 … 1"
    assert np.abs(varying.pixels.astype(int)[..., 0] - varying.pixels[..., 2]).max() > 100, "jet colours"


def test_unsquash_unsquashes_bilinearly_and_keeps_the_values():
    squashed = np.array([[0.0, 1.0], [2.0, 3.0]])
    # (width 4, height 2): half-pixel centres, columns at -0.25, 0.25, 0.75, 1.25 (clamped)
    assert unsquash(squashed, (4, 2)).tolist() == [[0.0, 0.25, 0.75, 1.0], [2.0, 2.25, 2.75, 3.0]]
    tokens = torch.rand(14, 14, dtype=torch.float64) * 1e-19
    shown = unsquash(tokens, (40, 30))
    assert shown.shape == (30, 40) and shown.dtype == np.float64
    expected = F.interpolate(tokens[None, None], size=(30, 40), mode="bilinear", align_corners=False)[0, 0]
    assert np.allclose(shown, expected.numpy(), rtol=1e-6, atol=0)
    assert tokens.min() <= shown.min() and shown.max() <= tokens.max()
    shrunk = unsquash(np.arange(16.0).reshape(4, 4), (2, 2))
    assert shrunk.tolist() == [[2.5, 4.5], [10.5, 12.5]], "shrinking averages pixel areas"
    with pytest.raises(ValueError, match=r"a map is \[height, width\], got shape \(1, 2, 2\)"):
        unsquash(np.zeros((1, 2, 2)), (4, 4))
    with pytest.raises(ValueError, match=r"image size must be \(width, height\) of at least 1 pixel each, "
                                         r"got \(0, 4\)"):
        unsquash(squashed, (0, 4))


def test_map_grid_prints_each_range_marks_the_flat_map_and_keeps_the_aspect_ratio():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)]
    masks = [np.pad(np.ones((8, 8), dtype=bool), 4)]
    maps = {"layer12": [_tiny_p_fine()], "layer8": [np.linspace(0.02, 0.9, 256).reshape(16, 16)]}
    figure = map_grid(images, masks, maps, notes=[{"layer8": "mIoU 58"}])
    image, mask, layer8, layer12, bar = figure.axes
    assert [a.get_title() for a in (image, mask, layer8, layer12)] == ["image", "mask", "Layer 8", "Layer 12"]
    assert all(a.images[0].get_array().shape[:2] == (30, 60) for a in (image, mask, layer8, layer12))
    assert layer8.get_xlabel() == "p_fine 0.02 … 0.9" and layer12.get_xlabel() == "p_fine 1.0e-19 … 1.0e-05"
    assert [t.get_text() for t in layer12.texts] == ["flat: range 1.0e-05"]
    assert [t.get_text() for t in layer8.texts] == ["mIoU 58"]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["min", "max"]
    assert bar.get_ylabel() == "each map from its own min to its own max (printed under it)"


def test_granularity_is_drawn_on_the_unsquashed_image():
    image = np.zeros((32, 64, 3), dtype=np.uint8)     # shown at 64 x 32; the router saw 64 x 64
    choice = np.array([[0, 1], [1, 1]])                  # 2 x 2 regions of 32 input px; finest: 2 x 2 cells
    out = draw_granularity(image, choice, (2, 1), region_size=2, patch=16, tint=0, input_size=(64, 64))
    assert out[7, 5].tolist() == out[8, 5].tolist() == [255, 255, 255], "cell border at input row 16 -> 8"
    assert not out[4, 5].any() and not out[12, 5].any()
    assert out[16, 48].tolist() == out[31, 48].tolist() == [255, 200, 0], "coarse region: rows 16 and 31"
    assert not out[24, 48].any(), "a coarse region has no inner border"
    model = small_vit(dtype=torch.float32).eval()
    batch = SMALL.normalise(torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8))
    figure = granularity_grid(model, batch, [1], SMALL, sizes=[(96, 48)])
    assert figure.axes[0].images[0].get_array().shape == (48, 96, 3)


# ---------------------------------------------------------------- image sizes

def _pair(folder: Path, name: str, width: int, height: int, orientation: int | None = None) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    pixels = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "images" / f"{name}.jpg", exif=exif)
    if orientation in (5, 6, 7, 8):   # the mask is drawn on the photo as displayed: sides swapped
        width, height = height, width
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4:, : width // 2] = 255
    Image.fromarray(mask).save(folder / "masks" / f"{name}.png")


def test_collect_maps_returns_images_at_their_own_aspect_ratio(tmp_path):
    _pair(tmp_path, "a", 64, 32)
    _pair(tmp_path, "b", 30, 90)
    dataset = MaskFolder(tmp_path / "images", tmp_path / "masks", SMALL)
    images, masks, maps = collect_maps(dataset, [RandomMaps()], [0, 1])
    assert [i.shape for i in images] == [(32, 64, 3), (90, 30, 3)]
    assert [m.shape for m in masks] == [(64, 64)] * 2 and [m.shape for m in maps["random"]] == [(64, 64)] * 2
    _pair(tmp_path / "big", "c", 1200, 600)
    big = MaskFolder(tmp_path / "big" / "images", tmp_path / "big" / "masks", SMALL)
    assert collect_maps(big, [RandomMaps()], [0])[0][0].shape == (224, 448, 3), "longer side capped at 448"


def test_items_carry_the_upright_size_of_their_image(tmp_path):
    from test_evaluate import _write_mat

    _pair(tmp_path, "upright", 40, 20)
    _pair(tmp_path, "turned", 40, 20, orientation=6)   # shown 20 wide, 40 high
    dataset = MaskFolder(tmp_path / "images", tmp_path / "masks", SMALL)
    assert dataset.keys() == ["turned.jpg", "upright.jpg"]
    assert dataset[0]["size"].tolist() == [20, 40] and dataset[1]["size"].tolist() == [40, 20]
    rng = np.random.default_rng(2)
    _write_mat(tmp_path / "gt.mat", [rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)], [np.ones((30, 50))])
    entries = ImagenetSegMat(tmp_path / "gt.mat", SMALL)
    assert entries[0]["size"].tolist() == [50, 30]
    images, _, _ = collect_maps(entries, [RandomMaps()], [0])
    assert images[0].shape == (30, 50, 3)


def test_layer_12_of_the_shipped_model_is_flat_and_layer_8_is_not():
    shared_file("data/ecssd")
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    from dge_explain import load_model

    home = shared_home()
    model = load_model("deit_tiny_dge_s12", home=home)
    dataset = segmentation_dataset(f"ecssd:{home}/data/ecssd", Preprocessing.of(model).for_segmentation())
    images, masks, maps = collect_maps(dataset, [GatingMaps(model, [8, 12])], [0, 1, 2, 3])
    assert [negligible(m, map_scale("layer12")) for m in maps["layer12"]] == [True] * 4
    assert [negligible(m, map_scale("layer8")) for m in maps["layer8"]] == [False] * 4
    sizes = [Image.open(dataset.images[stem]).size for stem in dataset.stems[:4]]
    assert [i.shape for i in images] == [(h, w, 3) for w, h in sizes]
    assert len({w > h for w, h in sizes}) == 2, "portrait and landscape images among them"
    figure = map_grid(images, masks, maps)
    panels = np.array(figure.axes[:-1]).reshape(4, 4)
    assert all([t.get_text() for t in axis.texts] == [flat_text(m)] for axis, m in zip(panels[:, 3], maps["layer12"]))
    assert all(flat_text(m).startswith("flat: range ") for m in maps["layer12"])
    assert all(not axis.texts for axis in panels[:, 2])


# ---------------------------------------------------------------- figures --run

def _perturb_run(folder: Path) -> Path:
    """A perturbation run's outputs as `dge-explain perturb` writes them (its own writer)."""
    folder.mkdir()
    falling = [1.0] * 3 + [0.0] * 6
    curves = {"random": {v: {"positive": falling, "negative": [1.0] * 9} for v in ("predicted", "target")}}
    records = [{"label": 3, "predicted": 3, "curves": curves}]
    settings = {"images": str(folder), "maps": {"random": {"method": "random", "seed": 0}},
                "preprocessing": SMALL.as_dict(), "fractions": list(FRACTIONS), "router_budget": None}
    write_outputs(folder, records, settings, None, [])
    return folder


def test_figures_of_a_perturb_run_are_its_curves_and_one_line_on_the_rest(tmp_path, capsys):
    run = _perturb_run(tmp_path / "perturb")
    written = figures_for_run(run, tmp_path / "figs")
    assert written == [tmp_path / "figs" / "perturbation.png", tmp_path / "figs" / "perturbation.pdf"]
    assert all(p.stat().st_size > 5_000 for p in written)
    assert capsys.readouterr().err == (
        f"{run} is a `dge-explain perturb` run: drew its perturbation curves; the map, granularity, comparison "
        "and precision-recall figures need a `dge-explain evaluate` run (images with masks)\n")


def _command(capsys, *args) -> tuple[int, str, str]:
    """`dge-explain ARGS` in this process: exit status, stdout, stderr."""
    capsys.readouterr()
    status = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_figures_command_on_a_perturb_run_and_on_bad_run_folders(tmp_path, capsys):
    run = _perturb_run(tmp_path / "perturb")
    figs = tmp_path / "figs"
    status, out, err = _command(capsys, "figures", "--run", run, "--out", figs)
    assert status == 0 and out.split() == [str(figs / "perturbation.png"), str(figs / "perturbation.pdf")]
    assert err.startswith(f"{run} is a `dge-explain perturb` run: drew its perturbation curves;")
    status, _, err = _command(capsys, "figures", "--run", figs, "--out", figs)
    assert status == 2 and err == (
        f"dge-explain figures: error: {figs / 'results.json'} does not exist: --run takes the output folder of a "
        "finished `dge-explain evaluate` or `dge-explain perturb` run (--debug shows the traceback)\n")
    (run / "results.json").write_text('{"run": {"images": ')
    status, _, err = _command(capsys, "figures", "--run", run, "--out", figs)
    assert status == 2 and err.startswith(f"dge-explain figures: error: {run / 'results.json'} is not readable JSON (")
    (run / "results.json").write_text(json.dumps({"run": {"command": "classify"}, "images": 3}))
    status, _, err = _command(capsys, "figures", "--run", run, "--out", figs)
    assert status == 2 and f"{run / 'results.json'} is neither an evaluate nor a perturb run's results" in err


def test_figures_of_an_evaluate_run_made_through_the_api(tmp_path, capsys):
    _pair(tmp_path / "data", "a", 64, 48)
    model = small_vit(dtype=torch.float32).eval()
    evaluate(model, f"ecssd:{tmp_path / 'data'}", build_explainers(model, ["random"]), tmp_path / "run",
             workers=0, progress=False, preprocessing=SMALL)
    written = figures_for_run(tmp_path / "run", tmp_path / "figs")
    assert written == [tmp_path / "figs" / "pr_curves.png", tmp_path / "figs" / "pr_curves.pdf"]
    assert capsys.readouterr().err == ""


def test_the_figures_command_on_an_evaluate_run_of_the_shipped_model(tmp_path, capsys):
    ecssd = shared_file("data/ecssd")
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    status, _, err = _command(capsys, "evaluate", "--model", "deit_tiny_dge_s12", "--dataset", f"ecssd:{ecssd}",
                              "--methods", "gradcam", "gating:8,12", "--limit", "2", "--batch-size", "2",
                              "--workers", "0", "--out", tmp_path / "run")
    assert status == 0, err[-3000:]
    status, out, err = _command(capsys, "figures", "--run", tmp_path / "run", "--out", tmp_path / "figs",
                                "--images", "2", "--dpi", "60")
    assert status == 0, err[-3000:]
    assert out.split() == [str(tmp_path / "figs" / f"{stem}.{suffix}") for stem in
                           ("pr_curves", "gating_layers", "granularity", "comparison") for suffix in ("png", "pdf")]
    assert "perturb" not in err
