"""The evaluation pipeline: datasets (folder pairs, the ImageNet-segmentation .mat
layout, suspicious masks and bad files), explainers and what the gating maps mean,
preprocessing from the model, outputs, a resume keyed by image identity, settings
and locks, and identical results whatever the batch size or the number of
processes."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from dge_explain.data import ImagenetSegMat, MaskFolder, Preprocessing, segmentation_dataset
from dge_explain.evaluation.segmentation import evaluate
from dge_explain.explainers import methods_of_run
from dge_explain.explainers import CAMMaps, GatingMaps, RandomMaps, batch_maps, build_explainers, token_grid
from dge_explain.explainers.gating import recommended_layer
from dge_explain.evaluation.metrics import aggregate, score_image
from dge_explain.models import dge_modules
from dge_explain.evaluation.runs import RunError, RunFolder

from conftest import shared_file
from helpers import counting_calls, randomise_routers, small_pvt

PLAIN = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 0.875).for_segmentation()


def _write_pairs(folder, count=6, start=0):
    rng = np.random.default_rng(start)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for i in range(start, start + count):
        h, w = 48 + 4 * i, 64
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 255
        image[mask > 0] = [250, 240, 10]
        Image.fromarray(image).save(folder / "images" / f"{i:04d}.jpg")
        Image.fromarray(mask).save(folder / "masks" / f"{i:04d}.png")
    return folder


@pytest.fixture
def pairs(tmp_path):
    return _write_pairs(tmp_path / "ecssd")


@pytest.fixture
def dge_model(generator):
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", depth=4, num_classes=10).eval()
    randomise_routers(model, generator, std=0.5)
    return model


def _run(model, spec, methods, out, **kwargs):
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    return evaluate(model, spec, build_explainers(model, methods), out, **kwargs)


def _results(out):
    return json.loads((out / "results.json").read_text())


def _records(out):
    return [json.loads(line) for path in sorted((out / "records").glob("rank*.jsonl"))
            for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- datasets

def test_mask_folder(pairs):
    data = MaskFolder(pairs / "images", pairs / "masks", PLAIN)
    item = data[2]
    assert item["image"].shape == (3, 224, 224) and item["mask"].shape == (224, 224)
    assert item["mask"].dtype == torch.bool and (item["index"], item["key"], item["error"]) == (2, "0002.jpg", "")
    assert 0.15 < item["mask"].float().mean() < 0.35 and item["mask_issue"] == ""
    assert data.keys() == [f"{i:04d}.jpg" for i in range(6)]
    assert data.digest(2) == item["digest"] and item["stat"].tolist() == data.stat(2)
    (pairs / "images" / "._0001.jpg").write_bytes(b"AppleDouble")          # macOS resource fork: skipped
    assert len(MaskFolder(pairs / "images", pairs / "masks")) == 6
    (pairs / "masks" / "0003.png").rename(pairs / "masks" / "0003.gif")
    with pytest.raises(ValueError, match=r"1 file\(s\) without a partner.*images/0003.jpg; unsupported suffix "
                                         r"\(supported: .*\): .*masks/0003.gif"):
        MaskFolder(pairs / "images", pairs / "masks")


def test_the_mask_is_resized_at_pixel_centres_as_pil_does(pairs):
    """PIL's nearest samples pixel centres ('nearest-exact'); torch's 'nearest' takes the
    floor and differs on a few rows and columns."""
    mask = np.zeros((50, 64), dtype=np.uint8)
    mask[7:31, 11:40] = 255
    Image.fromarray(mask).save(pairs / "masks" / "0000.png")
    Image.fromarray(np.zeros((50, 64, 3), dtype=np.uint8)).save(pairs / "images" / "0000.jpg")
    resized = MaskFolder(pairs / "images", pairs / "masks", PLAIN)[0]["mask"]
    expected = np.array(Image.fromarray(mask).resize((224, 224), Image.NEAREST)) > 0
    assert np.array_equal(resized.numpy(), expected)
    source = torch.from_numpy(mask > 0)[None, None].float()
    exact = F.interpolate(source, size=(224, 224), mode="nearest-exact")[0, 0] > 0
    floor = F.interpolate(source, size=(224, 224), mode="nearest")[0, 0] > 0
    assert torch.equal(resized, exact) and not torch.equal(resized, floor)


def test_the_image_goes_through_pil_bilinear_and_the_models_normalisation(pairs):
    config = Preprocessing(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic", 0.9).for_segmentation()
    image = MaskFolder(pairs / "images", pairs / "masks", config)[1]["image"]
    pixels = np.array(Image.open(pairs / "images" / "0001.jpg").convert("RGB").resize((224, 224), Image.BILINEAR))
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.equal(image, expected)


def test_suspicious_masks_are_flagged(pairs):
    # image i is (48 + 4 i) x 64
    Image.fromarray(np.zeros((52, 64), dtype=np.uint8)).save(pairs / "masks" / "0001.png")       # empty
    Image.fromarray(np.full((56, 64), 255, dtype=np.uint8)).save(pairs / "masks" / "0002.png")   # full
    jpeg = np.zeros((60, 64), dtype=np.uint8)
    jpeg[10:40, 10:50] = 255
    (pairs / "masks" / "0003.png").unlink()
    Image.fromarray(jpeg).save(pairs / "masks" / "0003.jpg", quality=60)                          # JPEG: grey edges
    alpha = np.zeros((64, 64, 4), dtype=np.uint8)
    alpha[10:40, 10:50, 3] = 255
    Image.fromarray(alpha, "RGBA").save(pairs / "masks" / "0004.png")                             # alpha only
    data = MaskFolder(pairs / "images", pairs / "masks", PLAIN)
    assert [data[i]["error"] for i in range(6)] == [""] * 6
    assert [data[i]["mask_issue"] for i in range(6)] == ["", "empty", "full", "non-binary", "alpha", ""]
    assert 0.25 < data[4]["mask"].float().mean() < 0.35, "the alpha channel is read (30 x 40 of 64 x 64)"


def test_a_bad_file_is_named_in_the_item(pairs, monkeypatch):
    (pairs / "images" / "0002.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(pairs / "masks" / "0001.png")
    data = MaskFolder(pairs / "images", pairs / "masks", PLAIN)
    assert "cannot read image" in data[2]["error"] and "0002.jpg" in data[2]["error"]
    assert data[1]["error"].startswith("mask ") and "0001.png is 10x10 but image" in data[1]["error"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # every 64-px-wide image is a "bomb" now
    assert "0000.jpg is too large to decode safely" in data[0]["error"]


def _write_mat(path, images, masks):
    """The layout of gtsegs_ijcv.mat: object references, arrays stored transposed."""
    reference = h5py.special_dtype(ref=h5py.Reference)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        image_refs, gt_refs = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            image_refs.append(refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0)).ref)
            gt = refs.create_dataset(f"gt{i}", data=mask.T)
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=reference)
            cell[0, 0] = gt.ref
            gt_refs.append(cell.ref)
        value = f.create_group("value")
        img = value.create_dataset("img", (len(images), 1), dtype=reference)
        gt = value.create_dataset("gt", (len(images), 1), dtype=reference)
        for i in range(len(images)):
            img[i, 0], gt[i, 0] = image_refs[i], gt_refs[i]


def test_imagenet_segmentation_mat(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8) for i in range(3)]
    masks = [np.zeros((30 + i, 40), dtype=np.uint8) for i in range(3)]
    for i, mask in enumerate(masks):
        mask[: 10 + i, :20] = 1
    path = tmp_path / "gtsegs_ijcv.mat"
    _write_mat(path, images, masks)
    data = segmentation_dataset(f"imagenet-seg:{path}", Preprocessing(40, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0))
    assert len(data) == 3 and data.keys() == ["00000", "00001", "00002"]
    for i in range(3):
        item = data[i]
        assert item["index"] == i and item["image"].shape == (3, 40, 40) and item["error"] == ""
        expected = np.array(Image.fromarray(masks[i]).resize((40, 40), Image.NEAREST)) > 0
        assert np.array_equal(item["mask"].numpy(), expected)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain.h5 is not an ImageNet-segmentation .mat file"):
        ImagenetSegMat(plain)


# ---------------------------------------------------------------- explainers

def test_explainers_give_maps_at_input_resolution(dge_model, generator):
    images = torch.randn(3, 3, 224, 224, generator=generator)
    routers = [dge.router for dge in dge_modules(dge_model)]
    explainer = GatingMaps(dge_model, layers=[1, 4])
    with explainer.capturing():
        assert len(routers[0]._forward_hooks) == 1 and len(routers[3]._forward_hooks) == 1
    gating = explainer(images)
    assert set(gating) == {"layer1", "layer4"} and gating["layer1"].shape == (3, 224, 224)
    assert gating["layer1"].dtype == torch.float64 and ((gating["layer1"] >= 0) & (gating["layer1"] <= 1)).all()
    assert all(not router._forward_hooks for router in routers), "gating hooks left behind on the routers"
    assert not dge_model.training
    cam = CAMMaps(dge_model)(images)["gradcam"]
    assert cam.shape == (3, 224, 224) and torch.isfinite(cam).all() and cam.amax() > 0
    assert all(not block._forward_hooks for block in dge_model.blocks), "GradCAM hooks left behind"
    predicted = dge_model(images).argmax(1)
    assert torch.equal(CAMMaps(dge_model)(images, labels=predicted)["gradcam"], cam)
    other = CAMMaps(dge_model)(images, labels=(predicted + 1) % 10)["gradcam"]
    assert not torch.allclose(other, cam), "a given target class changes the map"
    first = RandomMaps(3)(images, ["a.jpg", "b.jpg", "c.jpg"])["random"]
    assert torch.equal(first[1], RandomMaps(3)(images[:1], ["b.jpg"])["random"][0])
    assert not torch.equal(first[1], RandomMaps(4)(images[:1], ["b.jpg"])["random"][0])
    with pytest.raises(ValueError, match=r"layers \[5\] out of range: the model has DGE layers 1..4"):
        GatingMaps(dge_model, layers=[5])


def test_a_gating_map_is_the_upsampled_finest_probability_of_its_own_layer(generator):
    """Routers set by hand: layer l's logits are (w_l . pooled input, 0), so
    p_fine = sigmoid(w_l . pooled); the map of layer l is its bilinear upsampling,
    not another layer's and not the coarse option's."""
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", depth=3, num_classes=10).eval()
    dges = dge_modules(model)
    with torch.no_grad():
        for l, dge in enumerate(dges):
            dge.router.gate.weight.zero_()
            dge.router.gate.bias.zero_()
            dge.router.gate.weight[0, l * 7: l * 7 + 5] = 3.0 * (l + 1)
    pooled = {}
    handles = [dge.router.register_forward_hook(
        lambda module, args, out, l=l: pooled.__setitem__(l, module.pool(*args))) for l, dge in enumerate(dges)]
    images = torch.randn(2, 3, 224, 224, generator=generator)
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    maps = GatingMaps(model, "all")(images)
    fine = maps["layer2"]
    for l in range(3):
        p_fine = torch.sigmoid((pooled[l].double() @ dges[l].router.gate.weight[0].double()))   # [B, 7, 7]
        expected = F.interpolate(p_fine[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(maps[f"layer{l + 1}"], expected, rtol=0, atol=1e-6)
    assert not torch.allclose(maps["layer1"], fine, atol=1e-3) and not torch.allclose(maps["layer3"], fine, atol=1e-3)
    coarse = F.interpolate((1 - torch.sigmoid(pooled[1].double() @ dges[1].router.gate.weight[0].double()))[:, None],
                           size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    assert not torch.allclose(fine, coarse, atol=1e-3)
    margin = GatingMaps(model, [2], "margin")(images)["layer2-margin"]
    expected_margin = F.interpolate((pooled[1].double() @ dges[1].router.gate.weight[0].double())[:, None],
                                    size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(margin, expected_margin, rtol=0, atol=1e-5)


def test_large_logit_margins_still_give_a_map_that_varies(generator):
    """Margins of 18-34, as in layer 1 of the shipped model: float32 softmax rounds
    p_fine to 1 everywhere; the gating map keeps the router's ranking."""
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", depth=1, num_classes=10).eval()
    router = dge_modules(model)[0].router
    images = torch.randn(2, 3, 224, 224, generator=generator)
    pooled = []
    handle = router.register_forward_hook(lambda module, args, out: pooled.append(module.pool(*args)[..., 0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    low, high = float(pooled[0].min()), float(pooled[0].max())
    with torch.no_grad():     # fine-minus-coarse margins spread over [18, 34]
        router.gate.weight.zero_()
        router.gate.weight[0, 0] = 16 / (high - low)
        router.gate.bias.copy_(torch.tensor([18 - 16 * low / (high - low), 0.0]))
    captured = GatingMaps(model)
    with captured.capturing() as logits:
        with torch.no_grad():
            model(images)
    margins = logits[1][..., 0] - logits[1][..., 1]
    assert margins.min() > 17.9 and margins.max() < 34.1 and margins.std() > 1
    assert (logits[1].softmax(-1)[..., 0] == 1).all(), "float32 saturates"
    fine = GatingMaps(model)(images)["layer1"]
    assert fine[0].max() > fine[0].min()
    assert score_image(fine[0], fine[0] > fine[0].median()).ap > 0.5
    margin = GatingMaps(model, score="margin")(images)["layer1-margin"]
    assert margin.max() - margin.min() > 4


def test_gradcam_cuts_the_graph_at_its_target_layer_without_changing_the_map(dge_model, generator):
    """The backward starts at the target layer's output and computes no parameter
    gradient: the map equals pytorch-grad-cam's on the whole graph."""
    from pytorch_grad_cam import GradCAM

    images = torch.randn(2, 3, 224, 224, generator=generator)
    explainer = CAMMaps(dge_model)
    ours = explainer(images)["gradcam"]
    assert all(p.requires_grad and p.grad is None for p in dge_model.parameters())
    assert not explainer.layer._forward_hooks
    whole = GradCAM(model=dge_model, target_layers=[explainer.layer],
                    reshape_transform=token_grid(dge_model))
    try:
        with torch.enable_grad():
            reference = whole(input_tensor=images, targets=None)
    finally:
        whole.activations_and_grads.release()
    torch.testing.assert_close(ours, torch.from_numpy(reference), rtol=0, atol=1e-6)
    assert any(p.grad is not None for p in dge_model.parameters()), "the whole graph reached the weights"


def test_gating_maps_ride_along_gradcams_forward(dge_model, generator):
    images = torch.randn(2, 3, 224, 224, generator=generator)
    explainers = build_explainers(dge_model, ["gradcam", "gating:1,3", "gating-density:2", "random"])
    with counting_calls(dge_model) as calls:
        shared = batch_maps(explainers, images, ["a", "b"])
    assert len(calls) == 1, "one forward (GradCAM's) should serve the gating maps"
    assert sorted(shared) == ["gradcam", "layer1", "layer2-density", "layer3", "random"]
    alone = {**GatingMaps(dge_model, [1, 3])(images), **GatingMaps(dge_model, [2], "density")(images)}
    for name, maps in alone.items():
        torch.testing.assert_close(shared[name], maps, rtol=0, atol=1e-6)
    assert not any(router._forward_hooks for router in (d.router for d in explainers[1].dges))


def test_gating_maps_of_pvt_and_density(generator):
    model = small_pvt(phi=(1, 2, 4), dtype=torch.float32).eval()
    randomise_routers(model, generator)
    images = torch.randn(2, 3, 128, 128, generator=generator)
    maps = GatingMaps(model, "all", score="density")(images)
    assert list(maps) == ["layer1-density", "layer2-density", "layer3-density", "layer4-density"]
    assert all(m.shape == (2, 128, 128) for m in maps.values())
    assert all(((m >= 1 / 16 - 1e-6) & (m <= 1 + 1e-6)).all() for m in maps.values())
    cam = CAMMaps(small_pvt(phi=None, depths=(1, 1, 1, 2), dtype=torch.float32).eval())(images)
    assert cam["gradcam"].shape == (2, 128, 128)


def test_method_lists_name_one_set_of_maps(dge_model):
    names = lambda methods: sorted(n for e in build_explainers(dge_model, methods) for n in e.names())  # noqa: E731
    assert names(["gating:3,1", "random"]) == names(["Random", "gating:1", "gating:3"]) == \
        ["layer1", "layer3", "random"]
    assert names(["gating:all", "gating:2"]) == names(["gating:ALL"]) == ["layer1", "layer2", "layer3", "layer4"]
    default = f"layer{recommended_layer(4)}"
    assert names(["gating"]) == [default] and names(["gating:2", "gating"]) == sorted({"layer2", default})
    settings = {"maps": {n: c for e in build_explainers(dge_model, ["gating:2", "gating-margin:1", "gradcam"])
                         for n, c in e.describe().items()}}
    assert methods_of_run(settings) == ["gradcam", "gating:2", "gating-margin:1"]
    from dge_explain.evaluation.report import method_title, ordered_names

    assert ordered_names(["layer12", "layercam", "layer2-margin", "random", "layer2", "relevance"]) == \
        ["random", "relevance", "layercam", "layer2", "layer12", "layer2-margin"]
    assert [method_title(n) for n in ("layercam", "layer2-margin", "attention-gradcam")] == \
        ["LayerCAM", "Layer 2 (margin)", "Attention GradCAM"]


# ---------------------------------------------------------------- runs

def test_outputs_resume_and_batch_invariance(dge_model, pairs, tmp_path):
    spec, methods = f"ecssd:{pairs}", ["random", "gradcam", "gating:1,3"]
    once = _run(dge_model, spec, methods, tmp_path / "a", batch_size=3)
    assert list(once.methods) == ["random", "gradcam", "layer1", "layer3"]
    table = (tmp_path / "a" / "results.md").read_text().splitlines()
    assert table[0] == "| Metric | Random | GradCAM | Layer 1 | Layer 3 |"
    assert [row.split(" |")[0] for row in table[2:]] == ["| Accuracy", "| mAP", "| mIoU"]
    per_image = (tmp_path / "a" / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 6 * 4 and per_image[1].startswith("0,0000.jpg,random,")
    assert (tmp_path / "a" / "results.csv").read_text().startswith("method,images,accuracy,mAP,mIoU")
    results = _results(tmp_path / "a")
    assert results["run"]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert results["run"]["preprocessing"]["interpolation"] == "bilinear" and results["mask_issues"] == {}
    with np.load(tmp_path / "a" / "pr_histograms.npz") as histograms:
        assert sorted(histograms.files) == ["gradcam", "layer1", "layer3", "random"]
        assert histograms["random"].shape == (2, 100) and histograms["random"].sum() == 6 * 224 * 224

    # interrupted after the first batch (records are written a batch at a time), then resumed:
    # the same batches, identical numbers
    _run(dge_model, spec, methods, tmp_path / "b", limit=3, batch_size=3)
    resumed = _run(dge_model, spec, methods, tmp_path / "b", batch_size=3)
    assert _results(tmp_path / "b")["methods"] == results["methods"]
    assert resumed.images == 6 and len(_records(tmp_path / "b")) == 6
    # other batch sizes: the accumulation is exact, but BLAS may round the maps differently
    # for other matrix shapes (~5e-7), so model maps agree to float32 rounding: their APs to
    # ~1e-8, while a pixel whose map value sits at its image's binarisation threshold may flip.
    # One flip moves accuracy by 100 / (6 * 224 * 224) points and an IoU (pooled over >= 50k
    # foreground and >= 250k background pixels) by < 2e-3 (foreground) or 4e-4 (background)
    # points; the tolerances allow two flips. Random maps do not depend on batching.
    _run(dge_model, spec, methods, tmp_path / "c", batch_size=1)
    pixel_flips = {"Accuracy": 2 * 100 / (6 * 224 * 224), "IoU foreground": 4e-3,
                   "IoU background": 8e-4, "mIoU": (4e-3 + 8e-4) / 2}
    for method, row in results["methods"].items():
        for metric, value in row.items():
            other = _results(tmp_path / "c")["methods"][method][metric]
            if method == "random":
                assert other == value, (method, metric)
            elif metric == "mAP":
                assert other == pytest.approx(value, rel=1e-6), (method, metric)
            else:
                assert other == pytest.approx(value, abs=pixel_flips[metric]), (method, metric)
    with pytest.raises(RunError, match=r"holds a run with other settings \(maps: "):
        _run(dge_model, spec, ["random"], tmp_path / "b")


def test_an_added_image_is_scored_and_none_is_counted_twice(dge_model, pairs, tmp_path):
    spec, methods, out = f"ecssd:{pairs}", ["random", "gating:2"], tmp_path / "run"
    _run(dge_model, spec, methods, out, limit=4, batch_size=2)
    first = {r["key"]: r for r in _records(out)}
    # a new image that sorts second: positions 1.. shift, keys do not
    Image.open(pairs / "images" / "0005.jpg").save(pairs / "images" / "0000a.jpg")
    Image.open(pairs / "masks" / "0005.png").save(pairs / "masks" / "0000a.png")
    result = _run(dge_model, spec, methods, out, limit=4, batch_size=2)
    per_image = [line.split(",")[1] for line in (out / "per_image.csv").read_text().splitlines()[1::2]]
    assert result.images == 4 and per_image == ["0000.jpg", "0000a.jpg", "0001.jpg", "0002.jpg"]
    keys = [r["key"] for r in _records(out)]
    assert sorted(keys) == ["0000.jpg", "0000a.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]  # only 0000a is new
    again = {r["key"]: r for r in _records(out)}
    assert all(again[k] == first[k] for k in first), "scored images are not scored again"
    fresh = _run(dge_model, spec, methods, tmp_path / "fresh", limit=4, batch_size=2)
    assert fresh.methods["random"] == result.methods["random"]


def test_a_deleted_image_leaves_the_results_and_a_changed_one_is_rescored(dge_model, pairs, tmp_path, capsys):
    spec, methods, out = f"ecssd:{pairs}", ["random", "gating:2"], tmp_path / "run"
    _run(dge_model, spec, methods, out, batch_size=2)
    (pairs / "images" / "0002.jpg").unlink()
    (pairs / "masks" / "0002.png").unlink()
    capsys.readouterr()
    result = _run(dge_model, spec, methods, out, batch_size=2)
    assert result.images == 5 and len(_records(out)) == 6, "nothing rescored, 0002 left out"
    assert "1 scored image(s) are no longer in the dataset and are left out of the results: 0002.jpg" in \
        capsys.readouterr().err
    assert "0002.jpg" not in (out / "per_image.csv").read_text()
    # same content, new modification time (a copy): recognised by its digest, not rescored
    os.utime(pairs / "images" / "0001.jpg", (1, 1))
    _run(dge_model, spec, methods, out, batch_size=2)
    assert len(_records(out)) == 6
    # new content under the same name: scored afresh, the old record no longer counts
    pixels = np.array(Image.open(pairs / "images" / "0001.jpg"))
    Image.fromarray(255 - pixels).save(pairs / "images" / "0001.jpg")
    capsys.readouterr()
    changed = _run(dge_model, spec, methods, out, batch_size=2)
    assert "0001.jpg changed since it was scored: scoring it again" in capsys.readouterr().err
    assert changed.images == 5 and [r["key"] for r in _records(out)].count("0001.jpg") == 2
    fresh = _run(dge_model, spec, methods, tmp_path / "fresh", batch_size=2)
    assert fresh.methods["random"] == changed.methods["random"]


def test_a_reordered_or_respelled_method_list_resumes(dge_model, pairs, tmp_path):
    spec, out = f"ecssd:{pairs}", tmp_path / "run"
    first = _run(dge_model, spec, ["gating:3,1", "random"], out, limit=3)
    again = _run(dge_model, spec, ["Random", "gating:1", "gating:3"], out, limit=3)
    assert again.methods == first.methods and len(_records(out)) == 3


def test_a_second_process_on_the_same_folder_is_refused(dge_model, pairs, tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, "evaluate").locked():
        with pytest.raises(RunError, match=r"run is in use by dge-explain evaluate \(pid \d+ on .*\); wait for"):
            _run(dge_model, f"ecssd:{pairs}", ["random"], out)
    assert not (out / "run.json").exists()
    _run(dge_model, f"ecssd:{pairs}", ["random"], out)        # free again once the holder is gone


def test_a_smaller_limit_does_not_replace_a_larger_runs_results(dge_model, pairs, tmp_path):
    spec, out = f"ecssd:{pairs}", tmp_path / "run"
    _run(dge_model, spec, ["random"], out)
    before = (out / "results.json").read_text()
    with pytest.raises(RunError, match=r"holds the results of a run with all 6 images; --limit 3 would replace them "
                                       r"with those of fewer images: choose another --out, or a --limit of at least 6 "
                                       r"\(or none\)"):
        _run(dge_model, spec, ["random"], out, limit=3)
    assert (out / "results.json").read_text() == before
    assert _run(dge_model, spec, ["random"], out, limit=8).images == 6


def test_the_same_limit_after_an_image_left_is_accepted(dge_model, pairs, tmp_path, capsys):
    """The refusal compares --limit with the finished run's --limit, not with the
    images left: a deleted image does not make the same command a smaller run."""
    spec, out = f"ecssd:{pairs}", tmp_path / "run"
    assert _run(dge_model, spec, ["random"], out, limit=4).images == 4
    for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
        for stem in ("0004", "0005", "0002"):
            (pairs / folder / f"{stem}{suffix}").unlink()
    capsys.readouterr()
    assert _run(dge_model, spec, ["random"], out, limit=4).images == 3
    assert "1 scored image(s) are no longer in the dataset and are left out of the results: 0002.jpg" in \
        capsys.readouterr().err
    with pytest.raises(RunError, match=r"with --limit 4; --limit 2 would replace them"):
        _run(dge_model, spec, ["random"], out, limit=2)


def test_an_old_run_folder_is_refused(dge_model, pairs, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"dataset": "x", "methods": ["random"]}))
    with pytest.raises(RunError, match=r"run.json was written by an older dge-explain \(run format 1, this one "
                                       r"writes 3\), whose records cannot be matched safely"):
        _run(dge_model, f"ecssd:{pairs}", ["random"], out)


def test_an_unreadable_image_is_skipped_named_and_read_again_once_it_changes(dge_model, pairs, tmp_path, capsys):
    spec, out = f"ecssd:{pairs}", tmp_path / "run"
    (pairs / "images" / "0004.jpg").write_bytes(b"broken")
    assert _run(dge_model, spec, ["random"], out, batch_size=2).images == 5
    printed = capsys.readouterr().err
    assert f"skipped: cannot read image {pairs}/images/0004.jpg: not a readable image" in printed
    assert "1 of 6 images could not be read and are left out of the results (listed in them): 0004.jpg" in printed
    assert [f["key"] for f in _results(out)["failed"]] == ["0004.jpg"]
    assert [r["key"] for r in _records(out)] == [f"{i:04d}.jpg" for i in range(6)]
    assert _run(dge_model, spec, ["random"], out, batch_size=2).images == 5, "unchanged: not read again"
    assert len(_records(out)) == 6
    _write_pairs(pairs, count=1, start=4)
    assert _run(dge_model, spec, ["random"], out, batch_size=2).images == 6
    assert _results(out)["failed"] == []


def test_mask_issues_are_warned_and_counted(dge_model, pairs, tmp_path, capsys):
    Image.fromarray(np.zeros((52, 64), dtype=np.uint8)).save(pairs / "masks" / "0001.png")
    _run(dge_model, f"ecssd:{pairs}", ["random"], tmp_path / "run")
    assert "warning: 1 mask is empty after resizing (no foreground pixel); their images: 0001.jpg\n" in capsys.readouterr().err
    assert _results(tmp_path / "run")["mask_issues"] == {"empty": {"count": 1, "images": ["0001.jpg"]}}


def test_the_model_sees_its_own_normalisation(pairs, tmp_path, generator):
    model = timm.create_model("deit_dge_s12_tiny_patch16_224", depth=1, num_classes=10).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    _run(model, f"ecssd:{pairs}", ["random", "gating:1"], tmp_path / "run", limit=1)
    pixels = np.array(Image.open(pairs / "images" / "0000.jpg").convert("RGB").resize((224, 224), Image.BILINEAR))
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(seen[-1][0], expected)
    assert _results(tmp_path / "run")["run"]["preprocessing"]["std"] == [0.5, 0.5, 0.5]


def test_a_crash_cut_record_is_dropped_on_resume(dge_model, pairs, tmp_path):
    spec, methods = f"ecssd:{pairs}", ["random", "gating:2"]
    whole = _run(dge_model, spec, methods, tmp_path / "whole", batch_size=6)
    _run(dge_model, spec, methods, tmp_path / "cut", limit=3, batch_size=6)
    records = tmp_path / "cut" / "records" / "rank0.jsonl"
    text = records.read_text()
    records.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40])  # half of the last line
    resumed = _run(dge_model, spec, methods, tmp_path / "cut", batch_size=6)
    assert resumed.methods == whole.methods
    assert all(line.startswith('{"format": 3, "key"') for line in records.read_text().splitlines())


def test_settings_are_checked_before_anything_is_written(dge_model, pairs, tmp_path):
    with pytest.raises(ValueError, match=r"layers \[9\] out of range"):
        _run(dge_model, f"ecssd:{pairs}", ["gating:9"], tmp_path / "a")
    with pytest.raises(ValueError, match=r"input 200x200 does not fit"):
        evaluate(dge_model, f"ecssd:{pairs}", build_explainers(dge_model, ["random"]), tmp_path / "b",
                 preprocessing=Preprocessing(200, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0), workers=0)
    with pytest.raises(FileNotFoundError, match=r"folder .*missing/images does not exist"):
        _run(dge_model, f"ecssd:{tmp_path / 'missing'}", ["random"], tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dge_explain", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_command_line_errors_are_one_line_before_the_model_loads(pairs, tmp_path):
    out = tmp_path / "run"
    for args, message in [
        (["--methods", "saliency"], "unknown method 'saliency'"),
        (["--methods", "gating:1,,2"], "layers must be comma-separated integers"),
        (["--dataset", f"ecssd:{tmp_path / 'none'}"], "folder"),
        (["--model", "deit_dge_s12_tiny_patch16_224"], "has no trained weights unless you give a checkpoint"),
    ]:
        base = {"--dataset": f"ecssd:{pairs}", "--methods": "random", "--model": "deit_tiny_dge_s12"}
        for key, value in zip(args[::2], args[1::2]):
            base[key] = value
        result = _cli("evaluate", *[v for kv in base.items() for v in kv], "--out", out)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    debug = _cli("--debug", "evaluate", "--dataset", f"ecssd:{tmp_path / 'none'}", "--out", out)
    assert "Traceback" in debug.stderr and debug.returncode == 1


def test_two_processes_reduce_exactly(pairs, tmp_path, generator):
    model = timm.create_model("deit_dge_s12_tiny_patch16_224")
    randomise_routers(model, generator, std=0.5)
    checkpoint = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29500 + os.getpid() % 1000), "-m", "dge_explain", "evaluate"]
    args = ["--model", "deit_dge_s12_tiny_patch16_224", "--checkpoint", str(checkpoint),
            "--dataset", f"ecssd:{pairs}", "--methods", "random", "gating:1,2", "gradcam",
            "--batch-size", "2", "--workers", "0"]
    result = subprocess.run(base + args + ["--out", str(tmp_path / "ranks")], capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    single = _cli("evaluate", *args, "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    ranks, single_run = _results(tmp_path / "ranks")["methods"], _results(tmp_path / "single")["methods"]
    # The random maps do not depend on the split: exact.  The model's maps may
    # round differently for other batch shapes (BLAS blocking), so they agree
    # to float32 rounding (mAP to ~1e-8).
    assert ranks["random"] == single_run["random"]
    for method in ("layer1", "layer2", "gradcam"):
        for metric, value in single_run[method].items():
            assert ranks[method][metric] == pytest.approx(value, rel=1e-6), (method, metric)
    assert sorted(p.name for p in (tmp_path / "ranks" / "records").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    # a torchrun resume after an image was deleted: no image counted twice
    (pairs / "images" / "0003.jpg").unlink()
    (pairs / "masks" / "0003.png").unlink()
    again = subprocess.run(base + args + ["--out", str(tmp_path / "ranks")], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert _results(tmp_path / "ranks")["images"] == 5

    figures = _cli("figures", "--run", tmp_path / "single", "--out", tmp_path / "figs", "--images", "2",
                   "--dpi", "60")
    assert figures.returncode == 0, figures.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "comparison.pdf", "comparison.png", "gating_layers.pdf", "gating_layers.png",
        "granularity.pdf", "granularity.png", "pr_curves.pdf", "pr_curves.png"]


@pytest.mark.slow
def test_random_maps_on_ecssd_score_fifty_percent():
    folder = shared_file("data/ecssd")
    data = segmentation_dataset(f"ecssd:{folder}", PLAIN)
    random = RandomMaps(0)
    scores = []
    for i in range(len(data)):
        item = data[i]
        scores.append(score_image(random(item["image"][None], [item["key"]])["random"][0], item["mask"]))
    total = aggregate(scores).as_percent()
    assert len(scores) == 1000
    assert abs(total["Accuracy"] - 50.0) < 0.5 and abs(total["mAP"] - 50.0) < 0.5
