"""The front door: dge_explain.explain / score on any images, the geometry that
carries a map back to its photo, and `dge-explain explain` on a folder."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dge_explain
from dge_explain.cli import main
from dge_explain.data import Preprocessing
from dge_explain.data.geometry import map_to_image
from dge_explain.evaluation.segmentation import evaluate
from dge_explain.explainers import build_explainers

from helpers import randomise_routers

SIZES = [(64, 32), (32, 64), (48, 48)]   # (width, height): landscape, portrait, square


@pytest.fixture(scope="module")
def model():
    model = dge_explain.load_model("deit_dge_s12_tiny_patch16_224", random_weights=True)
    model.blocks = model.blocks[:2]   # two blocks: the same code paths, a fraction of the time
    randomise_routers(model, torch.Generator().manual_seed(0), std=0.5)
    return model


def _photos(folder, sizes=SIZES):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        pixels = np.random.default_rng(index).integers(0, 255, (height, width, 3), dtype=np.uint8)
        path = folder / f"photo{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_maps_come_back_at_each_photos_own_size_or_at_input_size(model, tmp_path):
    paths = _photos(tmp_path)
    maps = dge_explain.explain(model, paths, methods=("gating:2", "random"))
    assert [m.image_size for m in maps] == SIZES
    for image_maps, (width, height) in zip(maps, SIZES):
        assert sorted(image_maps) == ["layer2", "random"]
        assert image_maps["layer2"].shape == (height, width)
        low, high = image_maps.ranges()["layer2"]
        assert 0 <= low <= image_maps["layer2"].min() + 1e-12 and image_maps["layer2"].max() <= high + 1e-12
    at_input = dge_explain.explain(model, paths[:1], methods=("gating:2",), at_input_size=True)[0]
    assert at_input["layer2"].shape == (224, 224)
    # alone or in a batch: a block whose routing is uniform for the batch takes a fast path
    # (the same sums in another order), so equal to float32 rounding, not to the bit
    np.testing.assert_allclose(at_input["layer2"], maps[0].input_maps["layer2"].numpy(), rtol=0, atol=1e-6)


def test_paths_pil_images_arrays_and_tensors_give_the_same_maps(model, tmp_path):
    path = _photos(tmp_path, [(40, 30)])[0]
    image = Image.open(path).convert("RGB")
    preprocessing = Preprocessing.of(model).for_segmentation()
    from_path, from_pil, from_array = [dge_explain.explain(model, [source], methods=("gating:1",))[0]
                                       for source in (path, image, np.asarray(image))]
    tensor = dge_explain.explain(model, preprocessing.model_input(image), methods=("gating:1",))[0]
    for other in (from_pil, from_array):
        assert np.array_equal(other["layer1"], from_path["layer1"])
    assert tensor.image_size is None and np.array_equal(tensor["layer1"], from_path.input_maps["layer1"].numpy())
    with pytest.raises(ValueError, match=r"image 0: an array must be RGB uint8 \[H, W, 3\], got float64 \(4, 4\)"):
        dge_explain.explain(model, [np.zeros((4, 4))])
    with pytest.raises(ValueError, match=r"has no DGE routers"):
        dge_explain.explain(dge_explain.load_model("deit_tiny_patch16_224", random_weights=True), [path],
                            methods=("gating",))


def test_the_squash_carries_back_as_bilinear_upsampling():
    preprocessing = Preprocessing(8, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0).for_segmentation()
    values = torch.rand(8, 8, dtype=torch.float64)
    expected = F.interpolate(values[None, None], size=(5, 11), mode="bilinear", align_corners=False)[0, 0]
    assert np.allclose(map_to_image(values.numpy(), (11, 5), preprocessing), expected.numpy(), atol=1e-12)


def test_the_crop_carries_back_inside_the_crop_and_leaves_the_rest_unseen():
    """A 300x200 photo, input 224 at crop 0.875: resized to 384x256, the centre 224
    kept, i.e. photo columns 62.5-237.5 and rows 12.5-187.5 (pixel edges)."""
    preprocessing = Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875)
    columns = np.tile(np.arange(224, dtype=np.float64), (224, 1))
    carried = map_to_image(columns, (300, 200), preprocessing)
    assert carried.shape == (200, 300)
    seen = ~np.isnan(carried)
    rows, columns = slice(13, 187), slice(63, 237)
    assert seen[rows, columns].all() and not seen[:, :62].any() and not seen[:, 238:].any()
    assert not seen[:12].any() and not seen[188:].any()
    # a photo column x sits at input column (x + 0.5) * 384 / 300 - 0.5 - 80
    x = np.arange(70, 230)
    assert np.allclose(carried[100, x], (x + 0.5) * 384 / 300 - 0.5 - 80, atol=1e-9)


def test_the_geometry_is_the_preprocessings_own(model):
    """Round trip: a photo whose red channel is its column index, preprocessed by the
    classification crop, carried back: each photo pixel gets (about) its own column."""
    preprocessing = Preprocessing(224, (0.0,) * 3, (1.0,) * 3, "bilinear", 0.875)
    columns = np.tile(np.arange(250, dtype=np.uint8), (180, 1))
    photo = Image.fromarray(np.stack([columns] * 3, -1))
    seen = preprocessing.model_input(photo)[0].numpy() * 255
    carried = map_to_image(seen, photo.size, preprocessing)
    inside = ~np.isnan(carried)
    assert inside.sum() > 0.5 * inside.size   # (224 / 256) * (224 / 355) of the photo
    assert np.abs(carried[inside] - np.tile(np.arange(250.0), (180, 1))[inside]).max() < 1.5


def _pairs(folder, sizes=SIZES):
    paths = _photos(folder / "images", sizes)
    (folder / "masks").mkdir()
    masks = []
    for path, (width, height) in zip(paths, sizes):
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: 3 * height // 4, width // 3:] = 255
        masks.append(folder / "masks" / path.name)
        Image.fromarray(mask).save(masks[-1])
    return paths, masks


def test_score_is_the_protocols_as_evaluate_computes_it(model, tmp_path):
    paths, masks = _pairs(tmp_path / "data")
    methods = ("gating:1,2", "random", "gradcam")
    scores = dge_explain.score(dge_explain.explain(model, paths, methods=methods), masks)
    run = evaluate(model, f"masks:{tmp_path / 'data' / 'images'},{tmp_path / 'data' / 'masks'}",
                   build_explainers(model, methods), tmp_path / "run", workers=0, progress=False)
    assert sorted(scores) == sorted(run.methods) == ["gradcam", "layer1", "layer2", "random"]
    for name, values in run.methods.items():
        assert scores[name]["images"] == 3
        for metric in ("Accuracy", "mAP", "mIoU"):
            assert scores[name][metric] == pytest.approx(values[metric], abs=1e-6), (name, metric)
    with pytest.raises(ValueError, match=r"3 images' maps but 2 masks"):
        dge_explain.score(dge_explain.explain(model, paths, methods=("random",)), masks[:2])
    with pytest.raises(ValueError, match=r"the mask of .*photo0.png is 32x64 but the image is 64x32"):
        dge_explain.score(dge_explain.explain(model, paths[:1], methods=("random",)), masks[1:2])


def test_the_explain_command_writes_overlays_at_each_photos_size_and_resumes(tmp_path, capsys):
    paths = _photos(tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "maps"
    args = ["explain", str(tmp_path / "photos"), "--model", "deit_dge_s12_tiny_patch16_224", "--random-weights",
            "--methods", "gating:1", "gating-margin:1", "random", "--out", str(out), "--workers", "0", "--dpi", "40"]
    assert main(args) == 0
    printed = capsys.readouterr().err
    assert f"skipped: cannot read image {tmp_path / 'photos' / 'broken.jpg'}: not a readable image" in printed
    index = json.loads((out / "index.json").read_text())
    assert [image["key"] for image in index["images"]] == ["photo0.png", "photo1.png", "photo2.png"]
    assert index["failed"][0]["key"] == "broken.jpg"
    for image, path, (width, height) in zip(index["images"], paths, SIZES):
        folder = out / image["folder"]
        for name in ("layer1", "layer1-margin", "random"):
            assert Image.open(folder / f"{name}.png").size == (width, height)
            entry = image["maps"][name]
            assert entry["min"] <= entry["max"] and entry["units"] and isinstance(entry["flat"], bool)
        assert Image.open(folder / "grid.png").size[0] > 0
        with np.load(folder / "maps.npz") as saved:
            assert saved["image_size"].tolist() == [width, height]
            assert saved["layer1"].shape == (224, 224)
            assert saved["layer1"].min() == pytest.approx(image["maps"]["layer1"]["min"])
    assert "| photo1.png | 32x64 |" in (out / "index.md").read_text()
    records = (out / "records" / "rank0.jsonl").read_text()
    assert main(args) == 0, "resumed: nothing left to do"
    assert (out / "records" / "rank0.jsonl").read_text() == records
    # the first two files (sorted): the broken one and one photo; then the broken one alone
    assert main([*args[:-6], "--out", str(tmp_path / "two"), "--limit", "2", "--workers", "0", "--dpi", "40"]) == 0
    assert len(json.loads((tmp_path / "two" / "index.json").read_text())["images"]) == 1
    capsys.readouterr()
    assert main([*args[:-6], "--out", str(tmp_path / "one"), "--limit", "1", "--workers", "0", "--dpi", "40"]) == 2
    assert "error: none of the 1 images could be read (first: cannot read image" in capsys.readouterr().err


@pytest.mark.parametrize("order", ["dge_explain first", "timm first"])
def test_import_dge_explain_registers_its_models_with_timm_without_importing_torch(order):
    import subprocess
    import sys

    imports = "import dge_explain; loaded = 'torch' in sys.modules; import timm" if order == "dge_explain first" \
        else "import timm; import dge_explain; loaded = False"
    probe = (f"import sys; {imports}; print(loaded, timm.is_model('deit_dge_s12_small_patch16_224'), "
             "timm.is_model('pvt_dge_s124_medium_256'), timm.is_model('dpvt_dge_s12_tiny_256'))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True", "True", "True"], result.stderr[-2000:]
