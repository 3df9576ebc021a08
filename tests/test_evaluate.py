"""The evaluation pipeline: datasets (folder pairs and the ImageNet-segmentation
.mat layout), explainers, outputs, resume, and identical results whatever the
batch size or the number of processes."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from dge_explain.data import ImagenetSegMat, MaskFolder, segmentation_dataset
from dge_explain.evaluate import batch_maps, build_explainers, evaluate
from dge_explain.explain import GatingMaps, GradCAMMaps, RandomMaps
from dge_explain.metrics import aggregate, score_image

from conftest import shared_file
from helpers import randomise_routers, small_pvt


def _write_pairs(folder, count=6):
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
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


def test_mask_folder(pairs):
    data = MaskFolder(pairs / "images", pairs / "masks", size=32)
    image, mask, index, name = data[2]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.bool
    assert (index, name) == (2, "0002")
    assert 0.15 < mask.float().mean() < 0.35
    (pairs / "masks" / "0003.png").unlink()
    with pytest.raises(ValueError, match=r"1 file\(s\) without a partner.*images/0003.jpg"):
        MaskFolder(pairs / "images", pairs / "masks")


def test_mismatched_sizes_are_named(pairs):
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(pairs / "masks" / "0001.png")
    with pytest.raises(ValueError, match=r"mask .*0001.png is 10x10 but image .*0001.jpg is 64x52"):
        segmentation_dataset(f"ecssd:{pairs}")[1]


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
    data = segmentation_dataset(f"imagenet-seg:{path}", size=40)
    assert len(data) == 3
    for i in range(3):
        image, mask, index, _ = data[i]
        assert index == i and image.shape == (3, 40, 40)
        # nearest resize of a known mask: the top-left block stays foreground
        expected = torch.nn.functional.interpolate(torch.from_numpy(masks[i])[None, None].float(),
                                                   size=(40, 40), mode="nearest")[0, 0] > 0
        assert torch.equal(mask, expected)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain.h5 is not an ImageNet-segmentation .mat file"):
        ImagenetSegMat(plain)


def test_explainers_give_maps_at_input_resolution(dge_model, generator):
    images = torch.randn(3, 3, 224, 224, generator=generator)
    gating = GatingMaps(dge_model, layers=[1, 4])(images)
    assert set(gating) == {"layer1", "layer4"} and gating["layer1"].shape == (3, 224, 224)
    assert ((gating["layer1"] >= 0) & (gating["layer1"] <= 1)).all()
    assert len(dge_model.blocks[0]._forward_hooks) == 0 and not dge_model.training
    cam = GradCAMMaps(dge_model)(images)["gradcam"]
    assert cam.shape == (3, 224, 224) and torch.isfinite(cam).all() and cam.amax() > 0
    assert all(not block._forward_hooks for block in dge_model.blocks), "GradCAM hooks left behind"
    predicted = dge_model(images).argmax(1)
    assert torch.equal(GradCAMMaps(dge_model)(images, labels=predicted)["gradcam"], cam)
    other = GradCAMMaps(dge_model)(images, labels=(predicted + 1) % 10)["gradcam"]
    assert not torch.allclose(other, cam), "a given target class changes the map"
    first = RandomMaps(3)(images, [5, 6, 7])["random"]
    assert torch.equal(first[1], RandomMaps(3)(images[:1], [6])["random"][0])
    with pytest.raises(ValueError, match=r"layers \[5\] out of range: the model has DGE layers 1..4"):
        GatingMaps(dge_model, layers=[5])


def test_gating_maps_ride_along_gradcams_forward(dge_model, generator):
    images = torch.randn(2, 3, 224, 224, generator=generator)
    explainers = build_explainers(dge_model, ["gradcam", "gating:1,3", "gating-density:2", "random"])
    calls = []
    handle = dge_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        shared = batch_maps(explainers, images, [0, 1])
    finally:
        handle.remove()
    assert len(calls) == 1, "one forward (GradCAM's) should serve the gating maps"
    assert sorted(shared) == ["gradcam", "layer1", "layer2", "layer3", "random"]
    alone = {**GatingMaps(dge_model, [1, 3])(images), **GatingMaps(dge_model, [2], "density")(images)}
    for name, maps in alone.items():
        torch.testing.assert_close(shared[name], maps, rtol=0, atol=1e-6)
    assert not any(router._forward_hooks for router in (d.router for d in explainers[1].dges))


def test_gating_maps_of_pvt_and_density(generator):
    model = small_pvt(phi=(1, 2, 4), dtype=torch.float32).eval()
    randomise_routers(model, generator)
    images = torch.randn(2, 3, 128, 128, generator=generator)
    maps = GatingMaps(model, score="density")(images)
    assert list(maps) == ["layer1", "layer2", "layer3", "layer4"]
    assert all(m.shape == (2, 128, 128) for m in maps.values())
    assert all(((m >= 1 / 16 - 1e-6) & (m <= 1 + 1e-6)).all() for m in maps.values())
    cam = GradCAMMaps(small_pvt(phi=None, depths=(1, 1, 1, 2), dtype=torch.float32).eval())(images)
    assert cam["gradcam"].shape == (2, 128, 128)


def _results(out):
    return json.loads((out / "results.json").read_text())["methods"]


def test_outputs_resume_and_batch_invariance(dge_model, pairs, tmp_path):
    spec, methods = f"ecssd:{pairs}", ["random", "gradcam", "gating:1,3"]
    once = evaluate(dge_model, spec, methods, tmp_path / "a", batch_size=3, workers=0, progress=False)
    assert list(once.methods) == ["random", "gradcam", "layer1", "layer3"]
    table = (tmp_path / "a" / "results.md").read_text().splitlines()
    assert table[0] == "| Metric | Random | GradCAM | Layer 1 | Layer 3 |"
    assert [row.split(" |")[0] for row in table[2:]] == ["| Accuracy", "| mAP", "| mIoU"]
    per_image = (tmp_path / "a" / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 6 * 4 and per_image[1].startswith("0,0000,random,")
    assert (tmp_path / "a" / "results.csv").read_text().startswith("method,images,accuracy,mAP,mIoU")
    with np.load(tmp_path / "a" / "pr_histograms.npz") as histograms:
        assert sorted(histograms.files) == ["gradcam", "layer1", "layer3", "random"]
        assert histograms["random"].shape == (2, 100) and histograms["random"].sum() == 6 * 224 * 224

    # interrupted after the first batch (records are written a batch at a time), then resumed:
    # the same batches, identical numbers
    evaluate(dge_model, spec, methods, tmp_path / "b", limit=3, batch_size=3, workers=0, progress=False)
    resumed = evaluate(dge_model, spec, methods, tmp_path / "b", batch_size=3, workers=0, progress=False)
    assert _results(tmp_path / "b") == _results(tmp_path / "a")
    assert resumed.images == 6
    # other batch sizes: the accumulation is exact, but BLAS may round the maps differently
    # for other matrix shapes (~5e-7), so model maps agree to float32 rounding: their APs to
    # ~1e-8, while a pixel whose map value sits at its image's binarisation threshold may flip.
    # One flip moves accuracy by 100 / (6 * 224 * 224) points and an IoU (pooled over >= 50k
    # foreground and >= 250k background pixels) by < 2e-3 (foreground) or 4e-4 (background)
    # points; the tolerances allow two flips. Random maps do not depend on batching.
    evaluate(dge_model, spec, methods, tmp_path / "c", batch_size=1, workers=0, progress=False)
    pixel_flips = {"Accuracy": 2 * 100 / (6 * 224 * 224), "IoU foreground": 4e-3,
                   "IoU background": 8e-4, "mIoU": (4e-3 + 8e-4) / 2}
    for method, row in _results(tmp_path / "a").items():
        for metric, value in row.items():
            other = _results(tmp_path / "c")[method][metric]
            if method == "random":
                assert other == value, (method, metric)
            elif metric == "mAP":
                assert other == pytest.approx(value, rel=1e-6), (method, metric)
            else:
                assert other == pytest.approx(value, abs=pixel_flips[metric]), (method, metric)
    with pytest.raises(ValueError, match=r"holds a run with other settings.*methods"):
        evaluate(dge_model, spec, ["random"], tmp_path / "b", workers=0, progress=False)


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
    single = subprocess.run([sys.executable, "-m", "dge_explain", "evaluate", *args, "--out",
                             str(tmp_path / "single")], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    ranks, single_run = _results(tmp_path / "ranks"), _results(tmp_path / "single")
    # The random maps do not depend on the split: exact.  The model's maps may
    # round differently for other batch shapes (BLAS blocking), so they agree
    # to float32 rounding (mAP to ~1e-8).
    assert ranks["random"] == single_run["random"]
    for method in ("layer1", "layer2", "gradcam"):
        for metric, value in single_run[method].items():
            assert ranks[method][metric] == pytest.approx(value, rel=1e-6), (method, metric)
    assert sorted(p.name for p in (tmp_path / "ranks" / "records").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]

    figures = subprocess.run([sys.executable, "-m", "dge_explain", "figures", "--run", str(tmp_path / "single"),
                              "--out", str(tmp_path / "figs"), "--images", "2", "--dpi", "60"],
                             capture_output=True, text=True)
    assert figures.returncode == 0, figures.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "gating_layers.pdf", "gating_layers.png", "gradcam_comparison.pdf", "gradcam_comparison.png",
        "granularity.pdf", "granularity.png", "pr_curves.pdf", "pr_curves.png"]


@pytest.mark.slow
def test_random_maps_on_ecssd_score_fifty_percent():
    folder = shared_file("data/ecssd")
    data = segmentation_dataset(f"ecssd:{folder}")
    random = RandomMaps(0)
    scores = []
    for i in range(len(data)):
        image, mask, index, _ = data[i]
        scores.append(score_image(random(image[None], [index])["random"][0], mask))
    total = aggregate(scores).as_percent()
    assert len(scores) == 1000
    assert abs(total["Accuracy"] - 50.0) < 0.5 and abs(total["mAP"] - 50.0) < 0.5


def test_a_record_cut_off_by_a_crash_is_dropped_on_resume(dge_model, pairs, tmp_path):
    spec, methods = f"ecssd:{pairs}", ["random", "gating:2"]
    whole = evaluate(dge_model, spec, methods, tmp_path / "whole", batch_size=6, workers=0, progress=False)
    evaluate(dge_model, spec, methods, tmp_path / "cut", limit=3, batch_size=6, workers=0, progress=False)
    records = tmp_path / "cut" / "records" / "rank0.jsonl"
    text = records.read_text()
    records.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40])  # half of the last line
    resumed = evaluate(dge_model, spec, methods, tmp_path / "cut", batch_size=6, workers=0, progress=False)
    assert resumed.methods == whole.methods
    assert all(line.startswith('{"index"') for line in records.read_text().splitlines())


def test_bad_arguments_are_named(dge_model, pairs, tmp_path):
    from dge_explain.evaluate import build_explainers
    from dge_explain.zoo import load_by_name

    with pytest.raises(ValueError, match=r"method 'gating:1,,2': layers must be comma-separated"):
        build_explainers(dge_model, ["gating:1,,2"])
    with pytest.raises(ValueError, match=r"unknown method 'saliency'"):
        build_explainers(dge_model, ["saliency"])
    with pytest.raises(ValueError, match=r"method 'gradcam:3' takes no layers"):
        build_explainers(dge_model, ["gradcam:3"])
    with pytest.raises(ValueError, match=r"--limit must be at least 1"):
        evaluate(dge_model, f"ecssd:{pairs}", ["random"], tmp_path / "x", limit=0, workers=0)
    with pytest.raises(ValueError, match=r"dataset 'voc:/x' must be KIND:PATH"):
        segmentation_dataset("voc:/x")
    with pytest.raises(ValueError, match=r"--checkpoint applies to timm model names"):
        load_by_name("deit_tiny_dge_s12", checkpoint="x.pth")
    with pytest.raises(ValueError, match=r"--trained and --weights apply to shipped models"):
        load_by_name("deit_tiny_patch16_224", weights="x.safetensors")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(pairs / "masks" / "0001.jpg")
    with pytest.raises(ValueError, match=r"several files per name, which cannot be paired: \['0001.jpg', '0001.png'\]"):
        segmentation_dataset(f"ecssd:{pairs}")
