"""Preprocessing from the model: mean, std, interpolation, crop and input size come
from the model's timm data config (the shipped model and the DGE entrypoints
declare their own), overridable; a timm name without weights is refused."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from dge_explain import load_model, zoo
from dge_explain.zoo.build import data_config, dense_teacher
from dge_explain.evaluation.classification import evaluate_classification
from dge_explain.data import Preprocessing
from dge_explain.models import from_dense

from conftest import shared_file

AUGREG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"   # timm config: mean = std = 0.5, crop 0.9


def _augreg(**kwargs):
    return timm.create_model(AUGREG, depth=1, num_classes=3, **kwargs).eval()


def test_the_timm_config_is_used_and_can_be_overridden():
    model = _augreg()
    chosen = Preprocessing.of(model)
    assert (chosen.mean, chosen.std, chosen.crop_pct, chosen.interpolation, chosen.input_size) == \
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9, "bicubic", 224)
    assert "augreg_in21k_ft_in1k" in chosen.source
    changed = Preprocessing.of(model, mean=[0.1, 0.2, 0.3], crop_pct=1.0, interpolation="bilinear")
    assert (changed.mean, changed.std, changed.crop_pct, changed.interpolation) == \
        ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5), 1.0, "bilinear")
    assert "overridden: crop_pct, interpolation, mean" in changed.source
    segmentation = chosen.for_segmentation()
    assert (segmentation.interpolation, segmentation.crop_pct, segmentation.mean) == ("bilinear", 1.0, chosen.mean)
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\], got 1.5"):
        Preprocessing.of(model, crop_pct=1.5)
    with pytest.raises(ValueError, match=r"interpolation 'cubic' is not one of"):
        Preprocessing.of(model, interpolation="cubic")
    with pytest.raises(ValueError, match=r"crop mode 'border' is not supported"):
        Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9, "border")


def test_dge_models_declare_the_deit_evaluation_and_conversion_keeps_a_config():
    for name in ("deit_dge_s12_tiny_patch16_224", "pvt_dge_s12_tiny_256"):
        config = resolve_model_data_config(timm.create_model(name, depth=1) if "deit" in name
                                           else timm.create_model(name, depths=(1, 1, 1, 1)))
        assert (config["crop_pct"], config["interpolation"], config["mean"]) == (0.875, "bicubic",
                                                                                (0.485, 0.456, 0.406))
    assert Preprocessing.of(from_dense(_augreg())).mean == (0.5, 0.5, 0.5)
    assert data_config("deit_tiny_dge_s12")["crop_pct"] == 0.875


def test_the_shipped_model_declares_its_own_config():
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    # timm's config for the teacher says crop 0.9; the model was distilled and measured at 0.875
    assert resolve_model_data_config(timm.create_model("deit_tiny_patch16_224"))["crop_pct"] == 0.9
    for model in (load_model("deit_tiny_dge_s12"), dense_teacher("deit_tiny_dge_s12")):
        assert Preprocessing.of(model).crop_pct == 0.875


def test_classification_sees_the_models_own_normalisation_and_crop(tmp_path):
    """A 300x300 image with a 20 px red frame: crop 0.9 (resize to 248, crop 224) keeps
    4-5 px of frame, DeiT's 0.875 (resize to 256) about 1 px; mean = std = 0.5."""
    pixels = np.full((300, 300, 3), 128, dtype=np.uint8)
    pixels[:20], pixels[-20:], pixels[:, :20], pixels[:, -20:] = [255, 0, 0], [255, 0, 0], [255, 0, 0], [255, 0, 0]
    Image.fromarray(pixels).save(tmp_path / "n01440764_frame.png")
    model = _augreg()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    result = evaluate_classification(model, str(tmp_path), workers=0, progress=False)
    image = seen[0][0]
    assert result.preprocessing["mean"] == [0.5, 0.5, 0.5] and result.preprocessing["crop_pct"] == 0.9
    timm_view = create_transform(**resolve_model_data_config(model))(Image.fromarray(pixels))
    assert (image - timm_view).abs().max() < 0.05, "the same view as timm's own evaluation transform"
    assert image[0, 112, 112] == pytest.approx((128 / 255 - 0.5) / 0.5, abs=1e-6)
    red = (image[1, 112] < -0.9).nonzero().flatten()          # green channel low: the frame
    assert 3 <= int((red < 112).sum()) <= 6
    seen.clear()
    evaluate_classification(model, str(tmp_path), workers=0, progress=False,
                            preprocessing=Preprocessing.of(model, crop_pct=0.875, mean=(0.485, 0.456, 0.406),
                                                           std=(0.229, 0.224, 0.225)))
    assert int((seen[0][0][1, 112] < -0.9 * 0.5 / 0.224).sum()) <= 4


def test_a_timm_name_without_weights_is_refused_unless_asked_for():
    with pytest.raises(ValueError, match=r"model 'deit_dge_s12_tiny_patch16_224' has no trained weights unless "
                                         r"you give a checkpoint \(--checkpoint FILE; Python: checkpoint=FILE\); "
                                         r"pass --random-weights"):
        zoo.check_choice("deit_dge_s12_tiny_patch16_224")
    zoo.check_choice("deit_dge_s12_tiny_patch16_224", random_weights=True)
    with pytest.raises(ValueError, match=r"--checkpoint and --random-weights exclude each other"):
        zoo.check_choice("deit_dge_s12_tiny_patch16_224", checkpoint="x.pth", random_weights=True)
    with pytest.raises(ValueError, match=r"--random-weights, --fresh-routers and --partial apply to timm model names"):
        zoo.check_choice("deit_tiny_dge_s12", random_weights=True)
    with pytest.raises(ValueError, match=r"unknown model 'deit_giant'"):
        load_model("deit_giant", random_weights=True)
    model = load_model(AUGREG, random_weights=True)
    assert not model.training and zoo.identity(AUGREG, random_weights=True)["random_weights"] is True
