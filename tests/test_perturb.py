"""The perturbation test on a model whose logit depends only on known pixels (its
curves and AUCs by hand), removal order and ties, resume and the process split,
the router test's forced budget, and the command line on the shared images."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dge_explain.data import Preprocessing
from dge_explain.explainers import build_explainers
from dge_explain.models import dge_modules
from dge_explain.viz.figures import perturbation_figure, save
from dge_explain.explainers import Explainer
from dge_explain.evaluation.perturbation import FRACTIONS, _region_policy, auc, perturb, removal_masks

from conftest import shared_file
from helpers import randomise_routers, small_vit

PLAIN = Preprocessing(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", 1.0)


class Quadrant(nn.Module):
    """Two classes: logit 0 = mean of channel 0 over the top-left quadrant, logit 1 = 0.5."""

    def forward(self, x):
        half = x.shape[-1] // 2
        score = x[:, 0, :half, :half].mean((1, 2))
        return torch.stack([score, torch.full_like(score, 0.5)], 1)


class QuadrantMap(Explainer):
    """An explainer that ranks the top-left quadrant first."""

    def names(self):
        return ["quadrant"]

    def describe(self):
        return {"quadrant": {"method": "quadrant"}}

    def __call__(self, images, ids=None, labels=None):
        maps = torch.ones(images.shape[0], *images.shape[-2:])
        half = images.shape[-1] // 2
        maps[:, :half, :half] = 2.0
        return {"quadrant": maps}


@pytest.fixture
def white_images(tmp_path):
    """Three all-white 32 x 32 images of one synset: label 0, normalised value 1."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / f"n01440764_{i}.png")
    return folder


def test_curves_of_a_model_whose_logit_depends_on_known_pixels(white_images, tmp_path):
    summary = perturb(Quadrant(), str(white_images), [QuadrantMap()], tmp_path / "run", workers=0, progress=False,
                      preprocessing=PLAIN)
    curves = summary["curves"]["quadrant"]["predicted"]
    # positive: the quadrant (25 % of the pixels) goes first; logit 0 = 1 - f / 0.25 beats 0.5 up to f = 0.1
    assert curves["positive"] == [1.0, 1.0] + [0.0] * 8
    # negative: the other 75 % go first; at 0.8 a fifth of the quadrant is gone (0.8 > 0.5), at 0.9 three fifths
    assert curves["negative"] == [1.0] * 9 + [0.0]
    assert summary["auc"]["quadrant"]["predicted"] == {"positive": pytest.approx(15.0),
                                                       "negative": pytest.approx(85.0)}
    assert summary["auc"]["quadrant"]["target"] == summary["auc"]["quadrant"]["predicted"]
    assert summary["top1"] == 1.0 and summary["router"] is None
    figure = save(perturbation_figure(summary), tmp_path / "run" / "perturbation", dpi=100)[0]
    assert figure.stat().st_size > 5000
    table = (tmp_path / "run" / "results.md").read_text()
    assert table.splitlines()[0] == ("Perturbation AUC over 0-90 % of the pixels removed (3 images, top-1 100.0; "
                                     "negative: higher is better, positive: lower is better)")
    assert "| quadrant | 85.0 | 15.0 | 85.0 | 15.0 |" in table


def test_freed_memory_goes_back_to_the_system_after_every_batch(white_images, tmp_path, monkeypatch):
    """glibc keeps the perturbed batches' freed blocks on its heap (a 1000-image run
    grew to 15 GB): the run loop trims it after each batch."""
    from dge_explain.evaluation import loop

    calls = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda: calls.append(1))
    perturb(Quadrant(), str(white_images), [QuadrantMap()], tmp_path / "run", batch_size=1, workers=0,
            progress=False, preprocessing=PLAIN)
    assert len(calls) == 3, "one trim per batch"
    if platform.libc_ver()[0] == "glibc":
        assert loop._libc_trim() is not None, "glibc's malloc_trim is found"


def test_auc_is_the_trapezoid_over_zero_to_nine_tenths():
    """The protocol: top-1 at 0 % (unperturbed), 10 %, ..., 90 % removed; AUC = trapezoidal
    area over those fractions x 100 (docs/explainers-and-protocols.md, section 3)."""
    assert auc([1.0] * 10) == pytest.approx(90.0)
    assert auc([1.0] + [0.0] * 9) == pytest.approx(5.0)
    # by hand: 0.1 x (0.8 / 2 + 0.7 + 0.6 + 0.5 + 0.5 + 0.4 + 0.3 + 0.2 + 0.1 + 0.0 / 2) x 100 = 37
    assert auc([0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]) == pytest.approx(37.0)
    with pytest.raises(ValueError, match=r"^a perturbation curve has 10 points \(top-1 with 0, 10, 20, 30, 40, "
                                         r"50, 60, 70, 80, 90 % of the pixels removed\), got 9$"):
        auc([1.0] * 9)   # 10-90 % only


def test_removal_order_and_ties():
    maps = torch.tensor([[[3.0, 1.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])        # 1 x 1 x 10
    keep = removal_masks(maps)
    assert keep.shape == (1, 2, 9, 1, 10)
    for step, fraction in enumerate(FRACTIONS):
        assert int((~keep[0, 0, step]).sum()) == round(10 * fraction)
    assert (~keep[0, 0, 1]).flatten().tolist() == [True, False, False, False, True] + [False] * 5   # 3 then 2
    # ties are ranked by pixel index: the first 1.0s count as more relevant
    assert (~keep[0, 0, 2]).flatten().tolist() == [True, True, False, False, True] + [False] * 5
    assert (~keep[0, 1, 0]).flatten().tolist() == [False] * 9 + [True]                              # least first


def test_resume_and_a_second_process_give_the_same_numbers(white_images, tmp_path):
    for i in range(3, 6):
        pixels = np.full((32, 32, 3), 255, dtype=np.uint8)
        pixels[:16, :16] = 40 * i                       # dimmer quadrants: some images misclassified
        Image.fromarray(pixels).save(white_images / f"n01440764_{i}.png")
    once = perturb(Quadrant(), str(white_images), [QuadrantMap()], tmp_path / "a", batch_size=2, workers=0,
                   progress=False, preprocessing=PLAIN)
    perturb(Quadrant(), str(white_images), [QuadrantMap()], tmp_path / "b", limit=2, batch_size=2, workers=0,
            progress=False, preprocessing=PLAIN)
    resumed = perturb(Quadrant(), str(white_images), [QuadrantMap()], tmp_path / "b", batch_size=2, workers=0,
                      progress=False, preprocessing=PLAIN)
    assert resumed == once and once["images"] == 6 and 0 < once["top1"] < 1


def test_the_router_test_forces_the_budget_where_the_map_says(generator):
    scores = torch.rand(2, 64, 64, generator=generator)
    logits = torch.zeros(2, 4, 4, 3)
    for highest in (True, False):
        choice = _region_policy(scores, 0.25, highest)(logits)
        assert choice.shape == (2, 4, 4) and ((choice == 0).flatten(1).sum(1) == 4).all()
        assert set(choice.unique().tolist()) == {0, 2}, "finest or coarsest only"
        region = torch.nn.functional.adaptive_avg_pool2d(scores[:, None], (4, 4))[:, 0]
        for b in range(2):
            fine, coarse = region[b][choice[b] == 0], region[b][choice[b] == 2]
            assert (fine.min() >= coarse.max()) if highest else (fine.max() <= coarse.min())


def test_router_test_on_a_dge_model(tmp_path, generator):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, synset in enumerate(["n01440764", "n01443537", "n01484850"]):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{synset}_{i}.png")
    model = small_vit(dtype=torch.float32, num_classes=3).eval()
    randomise_routers(model, generator, std=0.5)
    explainers = build_explainers(model, ["random", "gating:1", "attention"])
    summary = perturb(model, str(folder), explainers, tmp_path / "run", workers=0, progress=False,
                      preprocessing=Preprocessing(64, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0), budget=0.5)
    assert set(summary["router"]) == {"trained router", "random regions", "random@highest", "random@lowest",
                                      "layer1@highest", "layer1@lowest", "attention@highest", "attention@lowest"}
    assert all(0 <= v <= 1 for v in summary["router"].values())
    assert all(d.forced_choice is None for d in dge_modules(model)), "the gates are free again"
    assert "Router test" in (tmp_path / "run" / "results.md").read_text()


def test_the_command_on_the_shared_images(tmp_path):
    shared_file("data/imagenet-sample")
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    result = subprocess.run([sys.executable, "-m", "dge_explain", "perturb", "--model", "deit_tiny_dge_s12",
                             "--methods", "random", "gating:8", "--limit", "2", "--batch-size", "2",
                             "--out", str(tmp_path / "run"), "--workers", "0"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["images"] == 2 and set(results["auc"]) == {"random", "layer8"}
    assert results["run"]["preprocessing"]["crop_pct"] == 0.875 and results["run"]["router_budget"] == 0.5
    assert "| Layer 8 |" in result.stdout


def test_two_processes_give_the_numbers_of_one(tmp_path, generator):
    import timm
    from safetensors.torch import save_file

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, synset in enumerate(["n01440764", "n01443537", "n01484850", "n01491361"]):
        Image.fromarray(rng.integers(0, 255, (240, 260, 3), dtype=np.uint8)).save(folder / f"{synset}_{i}.png")
    model = timm.create_model("deit_dge_s12_tiny_patch16_224")
    randomise_routers(model, generator, std=0.5)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    args = ["-m", "dge_explain", "perturb", "--model", "deit_dge_s12_tiny_patch16_224", "--checkpoint",
            str(tmp_path / "model.safetensors"), "--images", str(folder), "--methods", "random", "gating:1",
            "--batch-size", "1", "--workers", "0"]
    # torchrun runs the package folder as a script: its imports must find this checkout's
    # dge_explain, not whichever one the environment has installed
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                            str(29600 + os.getpid() % 1000), *args[1:], "--out", str(tmp_path / "ranks")],
                           capture_output=True, text=True, env=env)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "single")], capture_output=True,
                            text=True, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("ranks", "single")]
    for key in ("images", "top1", "auc", "curves", "router"):
        assert results[0][key] == results[1][key], key


@pytest.mark.parametrize("budget", ["0", "1.5", "half"])
def test_a_budget_outside_zero_one_is_refused_before_anything_loads(tmp_path, budget):
    result = subprocess.run([sys.executable, "-m", "dge_explain", "perturb", "--model", "deit_tiny_dge_s12",
                             "--images", str(tmp_path / "absent"), "--budget", budget, "--out", str(tmp_path / "run")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "argument --budget: " in result.stderr and "(0, 1)" in result.stderr
    assert not (tmp_path / "run").exists()
