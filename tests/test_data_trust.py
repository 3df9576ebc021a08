"""The user's own images and masks are read by stated rules (docs/your-data.md):
EXIF orientation applied, masks binarised at mid-grey unless two-level, any file
name printable, unreadable or oversized files named in one clean line, empty parts
of a dataset spec refused, and a replaced file always rescored."""
import json
import os
import shutil
import time
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from dge_explain import cli
from dge_explain.data import LabelledImageFolder, MaskFolder, Preprocessing, load_rgb, segmentation_dataset
from dge_explain.data.folders import fingerprint, printable
from dge_explain.data.imagenet import IdentifiedImages
from dge_explain.data.listing import check_dataset
from dge_explain.data.segmentation import binarise, read_mask
from dge_explain.data.transforms import Reader
from dge_explain.evaluation.segmentation import evaluate
from dge_explain.explainers import RandomMaps, build_explainers

from conftest import shared_file

PLAIN = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0).for_segmentation()
ORIENTATION = 0x0112


def _scene(height: int, width: int) -> np.ndarray:
    """An upright picture whose four quadrants differ, so that any turn shows."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = [250, 20, 20]
    pixels[: height // 2, width // 2:] = [20, 250, 20]
    pixels[height // 2:, : width // 2] = [20, 20, 250]
    pixels[height // 2:, width // 2:] = [240, 240, 240]
    return pixels


def _rotated_jpeg(path, upright: np.ndarray) -> np.ndarray:
    """Save `upright` as a camera would with EXIF orientation 6: the stored pixels
    turned a quarter anticlockwise, the tag saying to turn them clockwise to show.
    Returns the upright picture as decoded from the file (JPEG rounding included)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(path, quality=95, subsampling=0,
                                                                        exif=exif)
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert stored.shape[:2] == upright.shape[1::-1] and Image.open(path).getexif()[ORIENTATION] == 6
    return np.ascontiguousarray(np.rot90(stored, k=-1))


def _normalised(pixels: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    return preprocessing.segmentation_image(Image.fromarray(pixels))


def _pairs(folder, images: dict[str, np.ndarray], masks: dict[str, np.ndarray], image_suffix=".png"):
    """An images/ + masks/ folder (ECSSD layout) from arrays keyed by stem."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for stem, pixels in images.items():
        Image.fromarray(pixels).save(folder / "images" / f"{stem}{image_suffix}")
    for stem, mask in masks.items():
        Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")
    return folder


def _box_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 255
    return mask


def _tiny_model():
    return timm.create_model("deit_dge_s12_tiny_patch16_224", depth=1, num_classes=10).eval()


def _evaluate(model, spec, out, methods=("random",), **kwargs):
    kwargs.setdefault("workers", 0)
    return evaluate(model, spec, build_explainers(model, list(methods)), out, progress=False, **kwargs)


# ---------------------------------------------------------------- EXIF orientation

@pytest.mark.parametrize("height, width", [(24, 24), (30, 40)])
def test_every_reader_applies_the_exif_orientation(tmp_path, height, width):
    upright = _scene(height, width)
    path = tmp_path / "n01440764_photo.jpg"
    expected = _rotated_jpeg(path, upright)
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(path)), expected)
    assert np.array_equal(np.asarray(Reader(exif=False).rgb(path)), stored)
    assert np.abs(expected.astype(int) - upright).mean() < 3, "the upright picture, up to JPEG rounding"

    # the segmentation pairs: image and mask (drawn on the picture as displayed) both upright
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[: height // 2, : width // 2] = 255                      # the red quadrant
    (tmp_path / "images").mkdir()
    shutil.copy(path, tmp_path / "images" / "0000.jpg")
    _pairs(tmp_path, {}, {"0000": mask})
    item = MaskFolder(tmp_path / "images", tmp_path / "masks", PLAIN)[0]
    assert item["error"] == ""
    assert torch.equal(item["image"], _normalised(expected, PLAIN))
    assert torch.equal(item["mask"], torch.from_numpy(np.array(Image.fromarray(mask).resize((32, 32),
                                                                                            Image.NEAREST)) > 0))
    red = item["image"][0]
    assert red[item["mask"]].mean() > red[~item["mask"]].mean() + 1, "the mask covers the red quadrant"

    # the classification / perturbation folders
    classification = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    transform = classification.classification_transform()
    folder = LabelledImageFolder(str(tmp_path), transform, synsets=["n01440764"])
    assert torch.equal(folder[0][0], transform(Image.fromarray(expected)))
    assert torch.equal(IdentifiedImages(folder, 32)[0]["image"], transform(Image.fromarray(expected)))
    stored_folder = LabelledImageFolder(str(tmp_path), Preprocessing(
        32, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0, exif=False).classification_transform(), synsets=["n01440764"])
    assert torch.equal(stored_folder[0][0], transform(Image.fromarray(stored)))


def test_the_model_gets_the_upright_square_photo_and_the_run_records_the_rule(tmp_path):
    upright = _scene(32, 32)
    folder = _pairs(tmp_path / "data", {}, {"0000": _box_mask(32, 32)})
    expected = _rotated_jpeg(folder / "images" / "0000.jpg", upright)
    model = _tiny_model()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    preprocessing = Preprocessing.of(model).for_segmentation()
    _evaluate(model, f"ecssd:{folder}", tmp_path / "run", ["gating:1"], preprocessing=preprocessing)
    assert torch.equal(seen[-1][0], _normalised(expected, preprocessing))
    stored = np.asarray(Image.open(folder / "images" / "0000.jpg").convert("RGB"))
    assert not torch.equal(seen[-1][0], _normalised(stored, preprocessing))
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["preprocessing"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())["run"]["preprocessing"]
    assert settings == results
    assert (settings["exif"], settings["mask_threshold"], settings["max_image_pixels"]) == (True, 128, None)


def test_a_size_mismatch_names_the_exif_orientation(tmp_path):
    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "0000.jpg"
    _rotated_jpeg(image, _scene(30, 40))                      # stored 30 wide, 40 high; shown 40x30
    _pairs(tmp_path, {}, {"0000": _box_mask(40, 30)})         # the mask drawn on the stored pixels
    mask = tmp_path / "masks" / "0000.png"
    error = MaskFolder(tmp_path / "images", tmp_path / "masks", PLAIN)[0]["error"]
    assert error == (f"mask {mask} is 30x40 but image {image} is 40x30 as displayed (its EXIF orientation 6 "
                     "rotates the stored 30x40 pixels by 90 degrees clockwise; both are read upright)")
    stored_rules = PLAIN.with_overrides(exif=False)
    assert MaskFolder(tmp_path / "images", tmp_path / "masks", stored_rules)[0]["error"] == ""
    Image.fromarray(_box_mask(30, 40)).save(mask)              # the mask drawn as the photo displays
    assert MaskFolder(tmp_path / "images", tmp_path / "masks", PLAIN)[0]["error"] == ""
    assert MaskFolder(tmp_path / "images", tmp_path / "masks", stored_rules)[0]["error"] == (
        f"mask {mask} is 40x30 but image {image} is 30x40 as stored (its EXIF orientation 6, which displays "
        "it as 40x30, is ignored: EXIF is off)")


def test_reading_rules_are_settings_of_the_preprocessing_not_of_the_model():
    model = _tiny_model()
    chosen = Preprocessing.of(model, exif=False, mask_threshold=200, max_image_pixels=10**6)
    assert (chosen.exif, chosen.mask_threshold, chosen.max_image_pixels) == (False, 200, 10**6)
    assert "overridden" not in chosen.source, "reading rules never come from the model's data config"
    assert chosen.reader == Reader(exif=False, max_image_pixels=10**6)
    assert chosen.for_segmentation().as_dict()["mask_threshold"] == 200
    for bad, message in [({"mask_threshold": 0}, r"mask threshold must be a grey level in 1..255 .*got 0"),
                         ({"mask_threshold": 256}, r"mask threshold must be a grey level in 1..255 .*got 256"),
                         ({"max_image_pixels": 0}, r"max_image_pixels must be a positive integer .*got 0"),
                         ({"exif": "yes"}, r"exif must be True or False, got 'yes'")]:
        with pytest.raises(ValueError, match=message):
            PLAIN.with_overrides(**bad)


def test_a_runs_recorded_rules_rebuild_its_reading(tmp_path):
    """figures rebuild the dataset from run.json's preprocessing: the recorded rules
    come back, and a record without them (an older run) gets the defaults."""
    rules = PLAIN.with_overrides(exif=False, mask_threshold=200, max_image_pixels=5000)
    again = Preprocessing(**json.loads(json.dumps(rules.as_dict())))
    assert again.reader == Reader(exif=False, max_image_pixels=5000) and again.mask_threshold == 200
    older = {k: v for k, v in PLAIN.as_dict().items() if k not in ("exif", "mask_threshold", "max_image_pixels")}
    assert (Preprocessing(**older).exif, Preprocessing(**older).mask_threshold) == (True, 128)


# ---------------------------------------------------------------- mask threshold

def test_two_grey_levels_are_binary_whatever_they_are_and_more_are_cut_at_mid_grey():
    shape = np.array([[0, 0, 1], [1, 1, 0]], dtype=bool)
    for low, high in [(0, 1), (0, 255), (17, 200), (200, 255)]:
        levels = np.where(shape, high, low).astype(np.uint8)
        foreground, issues = binarise(levels, 128)
        assert np.array_equal(foreground, shape) and issues == [], (low, high)
    noisy = np.array([[0, 3, 127], [128, 250, 255]], dtype=np.uint8)
    assert binarise(noisy, 128)[0].tolist() == [[False, False, False], [True, True, True]]
    assert binarise(noisy, 128)[1] == ["non-binary"]
    assert binarise(noisy, 251)[0].tolist() == [[False, False, False], [False, False, True]]
    assert binarise(np.full((2, 2), 7, np.uint8), 128)[0].all(), "one non-zero level: all foreground"
    assert not binarise(np.zeros((2, 2), np.uint8), 128)[0].any()


def _edge_band(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 3x3 neighbour of the other level: within one pixel of an edge."""
    padded = np.pad(mask, 1, mode="edge")
    height, width = mask.shape
    neighbours = [padded[1 + dy: 1 + dy + height, 1 + dx: 1 + dx + width]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.any([n != mask for n in neighbours], axis=0)


def _jpeg_copy(png_path, jpeg_path, quality=90):
    Image.open(png_path).convert("L").save(jpeg_path, quality=quality)


def test_a_jpeg_copy_of_a_binary_mask_has_the_foreground_of_its_png(tmp_path):
    yy, xx = np.mgrid[:96, :128]
    shape = ((yy - 45) ** 2 + (xx - 60) ** 2 < 30 ** 2) | ((yy > 10) & (yy < 30) & (xx > 90) & (xx < 120))
    Image.fromarray(shape.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    _jpeg_copy(tmp_path / "mask.png", tmp_path / "mask.jpg")
    png, _, png_issues = read_mask((tmp_path / "mask.png").read_bytes(), "mask.png", Reader(), 128)
    jpeg, _, jpeg_issues = read_mask((tmp_path / "mask.jpg").read_bytes(), "mask.jpg", Reader(), 128)
    assert np.array_equal(png, shape) and png_issues == [] and jpeg_issues == ["non-binary"]
    band = _edge_band(shape)
    assert not np.any((jpeg != png) & ~band), "the JPEG's foreground differs only at edge pixels"
    grey = np.asarray(Image.open(tmp_path / "mask.jpg"))
    assert np.any(((grey > 0) != shape) & ~band), "the fixture holds noise that 'level > 0' would take"


def test_jpeg_copies_of_ecssd_masks_keep_their_foreground(tmp_path):
    folder = shared_file("data/ecssd/masks")
    for name in sorted(os.listdir(folder))[:8]:
        png, _, _ = read_mask(open(os.path.join(folder, name), "rb").read(), name, Reader(), 128)
        _jpeg_copy(os.path.join(folder, name), tmp_path / "copy.jpg")
        jpeg, _, _ = read_mask((tmp_path / "copy.jpg").read_bytes(), "copy.jpg", Reader(), 128)
        assert not np.any((jpeg != png) & ~_edge_band(png)), name


def test_non_binary_masks_are_warned_once_per_run_and_counted(tmp_path, capsys):
    stems = [f"{i:04d}" for i in range(7)]
    folder = _pairs(tmp_path / "data", {s: _scene(24, 32) for s in stems}, {s: _box_mask(24, 32) for s in stems})
    for stem in stems[:6]:                                    # six of the seven masks as JPEGs
        _jpeg_copy(folder / "masks" / f"{stem}.png", folder / "masks" / f"{stem}.jpg")
        (folder / "masks" / f"{stem}.png").unlink()
    capsys.readouterr()
    _evaluate(_tiny_model(), f"ecssd:{folder}", tmp_path / "run", batch_size=2)
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["warning: 6 masks are not binary (more than two grey levels, e.g. JPEG-compressed); "
                      "foreground = grey level >= 128 (--mask-threshold); their images: 0000.png, 0001.png, "
                      "0002.png, 0003.png, 0004.png and 1 more (all in results.json, mask_issues)"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["mask_issues"] == {"non-binary": {"count": 6, "images": [f"{s}.png" for s in stems[:6]]}}
    assert results["run"]["preprocessing"]["mask_threshold"] == 128


def test_the_mask_threshold_is_a_setting(tmp_path):
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[:, 8:16], mask[:, 16:24], mask[:, 24:] = 100, 160, 255   # four levels: not binary
    folder = _pairs(tmp_path, {"0000": _scene(24, 32)}, {"0000": mask})
    for threshold, columns in [(128, 16), (200, 8), (90, 24)]:
        rules = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "nearest", 1.0, mask_threshold=threshold)
        item = MaskFolder(folder / "images", folder / "masks", rules)[0]
        assert item["mask_issue"] == "non-binary"
        assert item["mask"].sum().item() == columns * 32, threshold


# ---------------------------------------------------------------- file names

NAME = b"caf\xe9"     # Latin-1 'cafe' with an acute e: not UTF-8


def _raw(folder, name: bytes) -> str:
    return os.fsdecode(os.path.join(os.fsencode(str(folder)), name))


def test_a_file_name_that_is_not_utf8_is_scored_and_written_everywhere(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _pairs(tmp_path, {"a": _scene(24, 32), "z": _scene(32, 24)}, {"a": _box_mask(24, 32), "z": _box_mask(32, 24)})
    Image.fromarray(_scene(28, 28)).save(_raw(images, NAME + b".png"), format="PNG")
    Image.fromarray(_box_mask(28, 28)).save(_raw(masks, NAME + b".png"), format="PNG")
    key = "caf\\xe9.png"
    assert MaskFolder(images, masks).keys() == ["a.png", key, "z.png"]
    out = tmp_path / "run"
    args = ["evaluate", "--model", "deit_dge_s12_tiny_patch16_224", "--random-weights",
            "--dataset", f"masks:{images},{masks}", "--methods", "random", "gating:1",
            "--out", str(out), "--workers", "0", "--batch-size", "2"]
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    assert "\udce9" not in printed.out + printed.err
    rows = (out / "per_image.csv").read_text(encoding="utf-8").splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["a.png", "a.png", key, key, "z.png", "z.png"]
    assert all((out / name).is_file() for name in ("results.md", "results.json", "pr_histograms.npz"))
    records = [json.loads(line) for line in (out / "records" / "rank0.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["a.png", key, "z.png"]
    # the random map is seeded by the printable key, as any other image's
    image = torch.zeros(1, 3, 224, 224)
    mask = torch.from_numpy(np.array(Image.fromarray(_box_mask(28, 28)).resize((224, 224), Image.NEAREST)) > 0)
    from dge_explain.evaluation.metrics import score_maps

    score = score_maps(RandomMaps(0)(image, [key])["random"], mask[None])[0][0].to_record()
    assert records[1]["scores"]["random"] == json.loads(json.dumps(score))

    # resumed: nothing rescored; an unreadable file of such a name is skipped, named printably
    assert cli.main(args) == 0
    Image.fromarray(_scene(20, 20)).save(_raw(images, b"m\xfcll.png"), format="PNG")
    with open(_raw(masks, b"m\xfcll.png"), "wb") as handle:
        handle.write(b"not a png")
    capsys.readouterr()
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    assert (f"skipped: cannot read mask {masks}/m\\xfcll.png: not a readable image (no image format that Pillow "
            "knows matches its 9 bytes)") in printed.err.splitlines()
    assert "\udcfc" not in printed.err
    records = (out / "records" / "rank0.jsonl").read_text().splitlines()
    assert len(records) == 4 and "error" in json.loads(records[-1])
    assert json.loads((out / "results.json").read_text())["failed"] == [
        {"key": "m\\xfcll.png", "error": json.loads(records[-1])["error"]}]
    # the listing names it printably too
    os.remove(_raw(masks, b"m\xfcll.png"))
    with pytest.raises(ValueError, match=r"1 file\(s\) without a partner .*: .*/images/m\\xfcll.png$"):
        check_dataset(f"masks:{images},{masks}")


def test_folder_keys_and_messages_are_printable(tmp_path):
    Image.fromarray(_scene(8, 8)).save(_raw(tmp_path, b"n01440764_" + NAME + b".png"), format="PNG")
    folder = LabelledImageFolder(str(tmp_path), PLAIN.classification_transform())
    assert folder.keys() == ["n01440764_caf\\xe9.png"]
    identified = IdentifiedImages(folder, 32)
    assert identified[0]["key"] == "n01440764_caf\\xe9.png" and identified[0]["error"] == ""
    assert identified.describe(0) == f"{tmp_path}/n01440764_caf\\xe9.png"
    assert printable(_raw(tmp_path, NAME)) == f"{tmp_path}/caf\\xe9"
    (tmp_path / "n01440764_caf\\xe9.png").write_bytes(b"")   # a name that spells the escape
    with pytest.raises(ValueError, match=r"n01440764_caf\\xe9.png and .*n01440764_caf\\xe9.png both print as "
                                         r"'n01440764_caf\\xe9.png' \(one name holds bytes that are not UTF-8\)"):
        LabelledImageFolder(str(tmp_path), PLAIN.classification_transform())


# ---------------------------------------------------------------- unreadable and oversized files

def test_an_unreadable_file_is_named_without_pillows_buffer(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0000.jpg").write_bytes(b"not a jpeg")
    _pairs(tmp_path, {}, {"0000": _box_mask(8, 8)})
    error = MaskFolder(tmp_path / "images", tmp_path / "masks", PLAIN)[0]["error"]
    assert error == (f"cannot read image {tmp_path}/images/0000.jpg: not a readable image (no image format that "
                     "Pillow knows matches its 10 bytes)")
    with pytest.raises(ValueError) as raised:
        load_rgb(tmp_path / "images" / "0000.jpg")
    assert str(raised.value) == error and "BytesIO" not in error


def test_an_oversized_image_is_one_clean_line_naming_the_file_and_the_setting(tmp_path, capsys, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_scene(48, 64)).save(path)                # 3072 pixels
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # nothing goes through `warnings`
        assert load_rgb(path, Reader(max_image_pixels=2000)).size == (64, 48)
        assert capsys.readouterr().err == (
            f"warning: image {path} has 3072 pixels (64x48), more than the limit of 2000 (a possible "
            "decompression bomb): read anyway; --max-image-pixels 3072 (or more) accepts it silently\n")
        with pytest.raises(ValueError) as raised:
            load_rgb(path, Reader(max_image_pixels=1000))
        assert str(raised.value) == (
            f"image {path} is too large to decode safely: 3072 pixels (64x48), more than twice the limit of "
            "1000 (a possible decompression bomb); if the file is trusted, rerun with --max-image-pixels 3072 "
            "(or more)")
        load_rgb(path, Reader(max_image_pixels=3072))
        assert capsys.readouterr().err == ""
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # None: Pillow's limit, whatever it is set to
        load_rgb(path)
        assert "more than the limit of 2000" in capsys.readouterr().err
        assert Image.MAX_IMAGE_PIXELS == 2000, "Pillow's own limit is left as it was"


def test_an_oversized_image_read_by_a_worker_warns_in_one_line(tmp_path, capfd):
    stems = ["0000", "0001"]
    folder = _pairs(tmp_path / "data", {s: _scene(48, 64) for s in stems}, {s: _box_mask(48, 64) for s in stems})
    rules = Preprocessing.of(_tiny_model(), max_image_pixels=2000).for_segmentation()
    capfd.readouterr()
    _evaluate(_tiny_model(), f"ecssd:{folder}", tmp_path / "run", preprocessing=rules, workers=1)
    err = capfd.readouterr().err
    assert err.splitlines() == [f"warning: {what} {folder}/{what}s/{s}.png has 3072 pixels (64x48), more than the "
                                "limit of 2000 (a possible decompression bomb): read anyway; --max-image-pixels "
                                "3072 (or more) accepts it silently" for s in stems for what in ("image", "mask")]


# ---------------------------------------------------------------- dataset specs

@pytest.mark.parametrize("spec, message", [
    ("masks:{d},", "dataset 'masks:{d},': the masks folder is empty; give masks:IMAGES_DIR,MASKS_DIR[:even|:odd]"),
    ("masks:,{d}", "dataset 'masks:,{d}': the images folder is empty; give masks:IMAGES_DIR,MASKS_DIR[:even|:odd]"),
    ("masks:{d}", "dataset 'masks:{d}' names 1 folder, not 2; give masks:IMAGES_DIR,MASKS_DIR[:even|:odd]"),
    ("masks:{d},{d},{d}", "dataset 'masks:{d},{d},{d}' names 3 folders, not 2; give masks:IMAGES_DIR,MASKS_DIR[:even|:odd]"),
    ("ecssd:", "dataset 'ecssd:': the folder is empty; give ecssd:FOLDER[:even|:odd]"),
    ("ecssd: ", "dataset 'ecssd: ': the folder is empty; give ecssd:FOLDER[:even|:odd]"),
    ("imagenet-seg:", "dataset 'imagenet-seg:': the .mat file is empty; give imagenet-seg:FILE.mat"),
])
def test_an_empty_part_of_a_dataset_spec_is_refused_by_name(tmp_path, capsys, monkeypatch, spec, message):
    spec, message = spec.format(d=tmp_path), message.format(d=tmp_path)
    _pairs(tmp_path, {"0000": _scene(8, 8)}, {"0000": _box_mask(8, 8)})
    monkeypatch.chdir(tmp_path)        # where an empty part used to resolve to
    with pytest.raises(ValueError) as raised:
        check_dataset(spec)
    assert str(raised.value) == message
    started = time.perf_counter()
    assert cli.main(["evaluate", "--dataset", spec, "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - started < 1.0, "refused before the model loads"
    assert capsys.readouterr().err == f"dge-explain evaluate: error: {message} (--debug shows the traceback)\n"
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- resume fingerprint

def _bmp_pairs(folder, count=3):
    """BMP images: a file's size depends on its width and height only, so that new
    pixels can replace old ones at the same size."""
    stems = [f"{i:04d}" for i in range(count)]
    rng = np.random.default_rng(0)
    return _pairs(folder, {s: rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for s in stems},
                  {s: _box_mask(24, 32) for s in stems}, image_suffix=".bmp")


def test_a_same_size_replacement_with_its_old_mtime_is_rescored(tmp_path, capsys):
    folder = _bmp_pairs(tmp_path / "data")
    model, spec, out = _tiny_model(), f"ecssd:{tmp_path / 'data'}", tmp_path / "run"
    _evaluate(model, spec, out)
    target = folder / "images" / "0001.bmp"
    before = target.stat()
    pixels = np.asarray(Image.open(target))
    Image.fromarray(255 - pixels).save(target)                           # other bytes, same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))        # as cp -p / touch -r / tar leave it
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert target.read_bytes() != pixels.tobytes()
    capsys.readouterr()
    rescored = _evaluate(model, spec, out)
    assert "0001.bmp changed since it was scored: scoring it again" in capsys.readouterr().err
    records = [json.loads(line)["key"] for line in (out / "records" / "rank0.jsonl").read_text().splitlines()]
    assert records == ["0000.bmp", "0001.bmp", "0002.bmp", "0001.bmp"]
    fresh = _evaluate(model, spec, tmp_path / "fresh")
    assert rescored.methods == fresh.methods

    # the same bytes copied over it (cp -p): a new ctime, recognised by its digest, not rescored
    shutil.copy2(target, tmp_path / "copy.bmp")
    shutil.copy2(tmp_path / "copy.bmp", target)
    recorded = json.loads((out / "records" / "rank0.jsonl").read_text().splitlines()[-1])["stat"][:4]
    assert recorded[:2] == fingerprint(target)[:2] and recorded != fingerprint(target)
    _evaluate(model, spec, out)
    assert len((out / "records" / "rank0.jsonl").read_text().splitlines()) == 4


def test_every_dataset_fingerprints_size_times_and_inode(tmp_path):
    folder = _bmp_pairs(tmp_path, count=1)
    image, mask = folder / "images" / "0000.bmp", folder / "masks" / "0000.png"
    fields = lambda s: [s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino]   # noqa: E731
    assert MaskFolder(folder / "images", folder / "masks").stat(0) == fields(image.stat()) + fields(mask.stat())
    shutil.copy(image, tmp_path / "n01440764_0.bmp")
    labelled = LabelledImageFolder(str(tmp_path), PLAIN.classification_transform())
    assert labelled.stat(0) == fields((tmp_path / "n01440764_0.bmp").stat())
    (tmp_path / "n01440764_0.bmp").unlink()
    assert labelled.stat(0) == [-1, -1, -1, -1], "a file gone since the listing matches no record"


def test_an_imagenet_segmentation_file_is_fingerprinted_too(tmp_path):
    import h5py

    path = tmp_path / "gt.mat"
    reference = h5py.special_dtype(ref=h5py.Reference)
    with h5py.File(path, "w") as f:
        image = f.create_dataset("#refs#/img", data=np.zeros((3, 8, 6), np.uint8))
        gt = f.create_dataset("#refs#/gt", data=np.array([[0, 1, 2] * 2] * 8, np.uint8))
        cell = f.create_dataset("#refs#/cell", (1, 1), dtype=reference)
        cell[0, 0] = gt.ref
        f.create_dataset("value/img", (1, 1), dtype=reference)[0, 0] = image.ref
        f.create_dataset("value/gt", (1, 1), dtype=reference)[0, 0] = cell.ref
    data = segmentation_dataset(f"imagenet-seg:{path}", PLAIN)
    status = path.stat()
    assert data.stat(0) == [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]
    item = data[0]
    assert item["error"] == "" and item["mask_issue"] == "non-binary,empty", "levels 0, 1, 2: cut at mid-grey"
    assert not item["mask"].any()
