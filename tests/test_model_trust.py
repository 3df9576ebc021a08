"""Issue 24, the model side: the README's pytorch-grad-cam recipe as written (square
and non-square inputs, dense and DGE DeiT and PVT), input sizes refused before any
forward by each family's rule (naming the nearest valid sizes), and --device values
torch cannot use here refused in one line."""
import copy
import re

import numpy as np
import pytest
import timm
import torch
from torch import nn

from dge_explain.distributed import Distributed, resolve_device
from dge_explain.evaluation.segmentation import check_input_size
from dge_explain.explainers import CAMMaps, GatingMaps, batch_maps, build_explainers, token_grid
from dge_explain.models import from_dense
from dge_explain.models.families import SizeRule, check_image_size

from helpers import randomise_routers, small_dpvt, small_pvt

# The README's recipe, word for word (PVT: target_layers=[model.block4[-2]]).
README_RECIPE = """\
from pytorch_grad_cam import GradCAM
from dge_explain.explainers import token_grid

cam = GradCAM(model=model, target_layers=[model.blocks[-2]], reshape_transform=token_grid(model))
grayscale_cam = cam(input_tensor=x, targets=None)
"""
PVT_TARGET = "model.block4[-2]"


def run_recipe(model, x, target="model.blocks[-2]"):
    namespace = {"model": model, "x": x}
    try:
        exec(README_RECIPE.replace("model.blocks[-2]", target), namespace)
    finally:
        if "cam" in namespace:
            namespace["cam"].activations_and_grads.release()
    return namespace["grayscale_cam"]


def hand_gradcam(model, layer, x, extra, grid):
    """GradCAM written out: the target layer's tokens in row-major grid order, channel
    weights = mean gradient of the predicted logit, ReLU of the weighted sum, scaled
    to [0, 1] and resized to the input as pytorch-grad-cam does (once per layer, once
    for the layer aggregate)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    seen = {}
    handle = layer.register_forward_hook(lambda module, args, out: seen.__setitem__("tokens", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    grads, = torch.autograd.grad(logits[torch.arange(len(x)), logits.argmax(1)].sum(), seen["tokens"])
    tokens = seen["tokens"][:, extra:].detach().reshape(len(x), *grid, -1)
    weights = grads[:, extra:].reshape(len(x), *grid, -1).mean((1, 2))
    cam = torch.relu((tokens * weights[:, None, None]).sum(-1)).numpy()
    size = (x.shape[-1], x.shape[-2])
    return scale_cam_image(scale_cam_image(cam, size), size)


def _vit(dge: bool, generator):
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=3, num_classes=5,
                              dynamic_img_size=True).eval()
    if dge:
        model = from_dense(model, phi=(1, 2)).eval()
        randomise_routers(model, generator, std=0.5)
    return model


def _pvt(dge: bool, generator):
    model = small_pvt(phi=(1, 2) if dge else None, depths=(1, 1, 1, 2), dtype=torch.float32).eval()
    if dge:
        randomise_routers(model, generator)
    return model


# (model builder, target layer of the recipe, extra tokens, token stride, square size, non-square size)
FAMILIES = {"dense deit": (lambda g: _vit(False, g), "model.blocks[-2]", 1, 16, (64, 64), (64, 128)),
            "dge deit": (lambda g: _vit(True, g), "model.blocks[-2]", 1, 16, (64, 64), (64, 128)),
            "dense pvt": (lambda g: _pvt(False, g), PVT_TARGET, 1, 32, (128, 128), (128, 192)),
            "dge pvt": (lambda g: _pvt(True, g), PVT_TARGET, 1, 32, (128, 128), (192, 128))}


@pytest.mark.parametrize("shape", ["square", "non-square"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_readme_recipe_as_written(family, shape, generator):
    build, target, extra, stride, square, other = FAMILIES[family]
    model = build(generator)
    size = square if shape == "square" else other
    x = torch.randn(2, 3, *size, generator=generator)
    maps = run_recipe(model, x, target)
    layer = eval(target, {"model": model})
    expected = hand_gradcam(model, layer, x, extra, (size[0] // stride, size[1] // stride))
    assert maps.shape == (2, *size)
    np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-5)
    assert all(m.std() > 0.05 for m in maps), "a map that varies, so that the grid's layout shows"
    torch.testing.assert_close(torch.from_numpy(maps), CAMMaps(model, "gradcam")(x)["gradcam"], rtol=0, atol=1e-5)


def test_the_recipe_follows_each_new_input_size(generator):
    model = _vit(True, generator)
    cam_maps = [run_recipe(model, torch.randn(1, 3, *size, generator=generator)).shape
                for size in ((64, 128), (128, 64), (64, 64))]
    assert cam_maps == [(1, 64, 128), (1, 128, 64), (1, 64, 64)]


def test_token_grid_says_what_to_do_when_it_cannot_know_the_grid(generator):
    model = _pvt(True, generator)
    with pytest.raises(ValueError) as error:
        token_grid(model)(torch.zeros(1, 17, 48))
    assert str(error.value) == (
        "token_grid(model) reads the token grid from the images of the model's forward and has seen none: "
        "create it before calling the CAM (or the model) on images [B, 3, H, W]")
    with pytest.raises(ValueError) as error:     # a stage-3 block: 8 x 8 tokens at stride 16
        run_recipe(model, torch.randn(1, 3, 128, 128, generator=generator), "model.block3[-1]")
    assert str(error.value) == (
        "the CAM target layer gave 64 tokens; at input 128x128 the last stage has 1 extra + 4x4 tokens "
        "(stride 32): target a block of the last stage, e.g. model.blocks[-2] (PVT: model.block4[-2])")


def test_the_grid_hook_leaves_with_its_token_grid(generator):
    model = _vit(True, generator)
    run_recipe(model, torch.randn(1, 3, 64, 64, generator=generator))
    assert not model._forward_pre_hooks, "the recipe's CAM is gone, and its hook with it"


DGE_TINY = "deit_dge_s12_tiny_patch16_224"
REFUSAL_300x400 = (f"input 300x400 does not fit {DGE_TINY} (DGEVisionTransformer): height and width must be "
                   "multiples of 32 (region 2 x patch 16); nearest valid: 288x384 or 320x416")


def test_gating_maps_and_cams_refuse_300x400_naming_the_nearest_valid_sizes(generator):
    model = timm.create_model(DGE_TINY, depth=2).eval()
    images = torch.randn(1, 3, 300, 400, generator=generator)
    for explainers in (GatingMaps(model), CAMMaps(model, "gradcam")):
        with pytest.raises(ValueError) as error:
            explainers(images)
        assert str(error.value) == REFUSAL_300x400
    with pytest.raises(ValueError) as error:
        run_recipe(model, images)
    assert str(error.value) == REFUSAL_300x400
    for size in ((288, 384), (320, 416)):
        maps = batch_maps(build_explainers(model, ["gating:all", "gradcam"]), torch.randn(1, 3, *size), ["a"])
        assert {name: tuple(m.shape) for name, m in maps.items()} == {
            "layer1": (1, *size), "layer2": (1, *size), "gradcam": (1, *size)}


def test_evaluate_checks_the_size_by_the_rule(monkeypatch):
    model = timm.create_model(DGE_TINY, depth=2).eval()
    monkeypatch.setattr(model, "forward", None)     # the rule alone answers: no forward runs
    with pytest.raises(ValueError) as error:
        check_input_size(model, 300, "cpu")
    assert str(error.value) == (f"input 300x300 does not fit {DGE_TINY} (DGEVisionTransformer): height and width "
                                "must be multiples of 32 (region 2 x patch 16); nearest valid: 288x288 or 320x320")
    check_input_size(model, 224, "cpu")
    dense = timm.create_model("deit_tiny_patch16_224", depth=1)
    with pytest.raises(ValueError) as error:
        check_input_size(dense, 256, "cpu")
    assert str(error.value) == (
        "input 256x256 does not fit deit_tiny_patch16_224 (VisionTransformer): it takes 224x224 only (its "
        "positional embedding has a fixed size; timm models created with dynamic_img_size=True take other sizes)")


def test_a_model_of_no_known_family_is_checked_by_a_blank_forward():
    model = nn.Sequential(nn.Conv2d(3, 2, 8, stride=8), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    check_input_size(model, 32, "cpu")
    with pytest.raises(ValueError, match=r"^input 40x40 does not fit Sequential: .*shapes cannot be multiplied"):
        check_input_size(model, 40, "cpu")


def _dge_vit(phi):
    return from_dense(timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=5), phi=phi)


def _padded_dge_vit():
    dense = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, depth=1, num_classes=5,
                              dynamic_img_size=True, dynamic_img_pad=True)
    return from_dense(dense, phi=(1, 2))


RULE_CASES = {
    "dge deit S=2": (lambda: _dge_vit((1, 2)), [(64, 64), (64, 96), (48, 64), (96, 32), (80, 64)]),
    "dge deit S=4": (lambda: _dge_vit((1, 2, 4)), [(64, 64), (64, 128), (96, 64), (32, 64), (128, 80)]),
    "dense deit, dynamic size": (lambda: timm.create_model("deit_tiny_patch16_224", depth=1, dynamic_img_size=True),
                                 [(64, 64), (48, 80), (50, 64), (64, 72)]),
    "dense deit, fixed size": (lambda: timm.create_model("deit_tiny_patch16_224", depth=1, img_size=64),
                               [(64, 64), (64, 80), (32, 32)]),
    "dge deit, padding patch embed": (_padded_dge_vit, [(64, 64), (49, 64), (48, 64), (56, 64), (57, 40), (63, 9)]),
    "dge pvt": (lambda: small_pvt(phi=(1, 2), dtype=torch.float32), [(64, 64), (64, 128), (96, 64), (128, 100)]),
    "dense pvt": (lambda: small_pvt(phi=None, dtype=torch.float32), [(64, 64), (96, 32), (100, 64)]),
    "dge dpvt": (lambda: small_dpvt(phi=(1, 2), dtype=torch.float32), [(64, 64), (64, 128), (96, 64)]),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_the_family_rule_refuses_exactly_what_the_forward_refuses(case):
    build, sizes = RULE_CASES[case]
    model = build().eval()
    verdicts = []
    for size in sizes:
        try:
            check_image_size(model, size)
            ruled = True
        except ValueError:
            ruled = False
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, *size))
            ran = True
        except (ValueError, RuntimeError, AssertionError):
            ran = False
        verdicts.append((size, ruled, ran))
    assert all(ruled == ran for _, ruled, ran in verdicts), verdicts
    assert {ran for _, _, ran in verdicts} == {True, False}, "each case tries sizes on both sides"


@pytest.mark.parametrize("multiple,padded_to", [(32, 1), (64, 1), (16, 8), (32, 16), (64, 16)])
def test_the_nearest_valid_sizes_are_the_nearest(multiple, padded_to):
    rule = SizeRule(multiple, "why", padded_to)
    valid = [side for side in range(1, 400) if rule.fits(side, multiple)]
    for side in range(1, 300):
        if rule.fits(side, multiple):
            assert rule.problem(side, multiple) is None
            continue
        below = max((v for v in valid if v < side), default=None)
        above = min(v for v in valid if v > side)
        suggested = re.search(r"nearest valid: (.*)$", rule.problem(side, multiple)).group(1)
        expected = ([f"{below}x{multiple}"] if below else []) + [f"{above}x{multiple}"]
        assert suggested == " or ".join(expected), side


def test_an_unusable_device_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    expected = {
        "cuda": "--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
                "use --device cpu",
        "cuda:3": "--device cuda:3: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
                  "use --device cpu",
        "mps": "--device mps: no MPS device is visible to torch (torch.mps.is_available() is False); use --device cpu",
        "tpu": "--device tpu: 'tpu' is not a torch device type (e.g. cpu, cuda, cuda:1, mps)",
        "nonsense": "--device nonsense: 'nonsense' is not a torch device type (e.g. cpu, cuda, cuda:1, mps)",
        "cuda:x": "--device 'cuda:x': not a device torch can read (TYPE or TYPE:INDEX, e.g. cuda or cuda:1)",
    }
    for text, message in expected.items():
        for make in (resolve_device, Distributed):
            with pytest.raises(ValueError) as error:
                make(text)
            assert str(error.value) == message, (make, text)
    assert Distributed("cpu").device == torch.device("cpu")


def test_a_cuda_index_beyond_the_visible_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError) as error:
        resolve_device("cuda:3")
    assert str(error.value) == ("--device cuda:3: torch sees 2 CUDA devices (cuda:0, cuda:1); use one of those "
                                "or --device cpu")


def test_a_model_with_a_token_grid_still_pickles_and_copies(generator, tmp_path):
    model = _vit(True, generator)
    explainer = CAMMaps(model, "gradcam")
    torch.save(model, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
    twin = copy.deepcopy(model)
    for other in (loaded, twin):
        other(torch.randn(1, 3, 64, 128, generator=generator))
    assert explainer.reshape.image_hw is None, "copies do not speak for the original's grid"
    model(torch.randn(1, 3, 64, 128, generator=generator))
    assert explainer.reshape.image_hw == (64, 128)


def test_attention_explainers_refuse_300x400_naming_the_nearest_valid_sizes():
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", depth=2).eval()
    with pytest.raises(ValueError) as error:
        batch_maps(build_explainers(model, ["attention", "rollout", "gating"]), torch.zeros(1, 3, 300, 400), ["a"])
    assert str(error.value) == ("input 300x400 does not fit deit_dge_s12_tiny_patch16_224 (DGEVisionTransformer): "
                                "height and width must be multiples of 32 (region 2 x patch 16); nearest valid: "
                                "288x384 or 320x416")
