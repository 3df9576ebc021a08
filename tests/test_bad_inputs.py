"""One dataset folder holding every bad input a user's data has shown us: the run
says one clear line per problem, scores and keeps every good image, and exits
non-zero only where it cannot go on."""
import io
import json
import os

import numpy as np
from PIL import Image

from dge_explain.cli import main


def _scene(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _mask(height, width):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return mask


def _raw(folder, name: bytes):
    return os.path.join(os.fsencode(folder), name)


def _bad_folder(root):
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    # good: stored sideways with EXIF orientation 6, its mask drawn as the photo displays
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_scene(40, 60)).save(images / "a_rotated.jpg", exif=exif)
    Image.fromarray(_mask(60, 40)).save(masks / "a_rotated.png")
    # good, but its mask saved as JPEG: more than two grey levels
    Image.fromarray(_scene(48, 48, 1)).save(images / "b_jpeg_mask.jpg")
    Image.fromarray(_mask(48, 48)).save(masks / "b_jpeg_mask.jpg", quality=60)
    # good, named in bytes that are not UTF-8
    Image.fromarray(_scene(48, 48, 2)).save(_raw(images, b"c_caf\xe9.png"), format="PNG")
    Image.fromarray(_mask(48, 48)).save(_raw(masks, b"c_caf\xe9.png"), format="PNG")
    # unreadable image
    (images / "d_broken.jpg").write_bytes(b"this is no jpeg")
    Image.fromarray(_mask(48, 48)).save(masks / "d_broken.png")
    # mask and image of different sizes (no EXIF involved)
    Image.fromarray(_scene(48, 48, 3)).save(images / "e_mismatch.png")
    Image.fromarray(_mask(40, 48)).save(masks / "e_mismatch.png")
    # above the pixel limit given below (5000): read, with a warning; above twice it: refused
    Image.fromarray(_scene(60, 100, 4)).save(images / "f_large.png")
    Image.fromarray(_mask(60, 100)).save(masks / "f_large.png")
    Image.fromarray(_scene(120, 100, 5)).save(images / "g_huge.png")
    Image.fromarray(_mask(120, 100)).save(masks / "g_huge.png")
    # an empty mask, and a mask in its alpha channel only
    Image.fromarray(_scene(48, 48, 6)).save(images / "h_empty.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(masks / "h_empty.png")
    Image.fromarray(_scene(48, 48, 7)).save(images / "i_alpha.png")
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[..., 3] = _mask(48, 48)
    Image.fromarray(rgba, "RGBA").save(masks / "i_alpha.png")
    # a macOS resource fork beside an image: never an image
    (images / "._a_rotated.jpg").write_bytes(b"\x00\x05\x16\x07")
    return root


def test_every_bad_input_gets_one_line_and_every_good_image_is_scored(tmp_path, capsys):
    data = _bad_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["evaluate", "--model", "deit_dge_s12_tiny_patch16_224", "--random-weights",
            "--dataset", f"ecssd:{data}", "--methods", "random", "gating:1", "--out", str(out),
            "--workers", "0", "--batch-size", "4", "--max-image-pixels", "5000"]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("evaluate:")]
    expected = [
        f"skipped: cannot read image {data}/images/d_broken.jpg: not a readable image",
        f"skipped: mask {data}/masks/e_mismatch.png is 48x40 but image {data}/images/e_mismatch.png is 48x48",
        f"warning: image {data}/images/f_large.png has 6000 pixels (100x60), more than the limit of 5000",
        f"warning: mask {data}/masks/f_large.png has 6000 pixels (100x60), more than the limit of 5000",
        f"skipped: image {data}/images/g_huge.png is too large to decode safely: 12000 pixels (100x120)",
        "3 of 9 images could not be read and are left out of the results (listed in them): d_broken.jpg, "
        "e_mismatch.png, g_huge.png",
        "warning: 1 mask is empty after resizing (no foreground pixel); their images: h_empty.png",
        "warning: 1 mask is not binary",
        "warning: 1 mask is stored in the alpha channel only (read from there); their images: i_alpha.png",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)
    assert len(lines) == len(expected), lines
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 6
    assert [f["key"] for f in results["failed"]] == ["d_broken.jpg", "e_mismatch.png", "g_huge.png"]
    assert results["mask_issues"]["non-binary"]["images"] == ["b_jpeg_mask.jpg"]
    scored = {row.split(",")[1] for row in (out / "per_image.csv").read_text().splitlines()[1:]}
    assert scored == {"a_rotated.jpg", "b_jpeg_mask.jpg", "c_caf\\xe9.png", "f_large.png", "h_empty.png",
                      "i_alpha.png"}
    assert results["run"]["preprocessing"]["exif"] is True
    # rerun: nothing is scored again, nothing is lost
    records = (out / "records" / "rank0.jsonl").read_text()
    assert main(args) == 0
    assert (out / "records" / "rank0.jsonl").read_text() == records
    assert json.loads((out / "results.json").read_text())["images"] == 6


def test_where_the_run_cannot_go_on_it_exits_non_zero_in_one_line(tmp_path, capsys):
    data = _bad_folder(tmp_path / "data")
    base = ["evaluate", "--model", "deit_dge_s12_tiny_patch16_224", "--random-weights",
            "--dataset", f"ecssd:{data}", "--methods", "random", "--workers", "0"]
    (tmp_path / "a_file").write_text("")
    assert main([*base, "--out", str(tmp_path / "a_file")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file, not a folder (--debug shows the traceback)")
    (data / "masks" / "a_rotated.png").unlink()
    assert main([*base, "--out", str(tmp_path / "run")]) == 2
    assert "1 file(s) without a partner" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
