"""Every script in figures/ runs as documented and writes a PNG and a PDF."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    # a script's own folder heads its sys.path, not the checkout: point it at the
    # dge_explain beside it, not whichever one the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(ROOT / "figures" / script), *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.mark.parametrize("script,args", [
    ("gating_layers.py", ["--images", "0", "1", "--layers", "4,8"]),
    ("comparison.py", ["--images", "0", "--layers", "8", "--methods", "gradcam", "rollout", "gating"]),
    ("detection.py", ["--count", "2"]),
    ("semantic.py", ["--count", "2"]),
    ("semantic.py", ["--count", "2", "--side-by-side"]),
])
def test_scripts_on_the_shared_data(script, args, tmp_path):
    shared_file("data/ecssd")
    shared_file("data/coco128-seg")
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    written = _run(script, "--out", tmp_path / "figure", "--dpi", "60", *args)
    assert written == [str(tmp_path / "figure.png"), str(tmp_path / "figure.pdf")]
    assert all(Path(p).stat().st_size > 5_000 for p in written)


def test_detection_of_two_backbones_side_by_side(tmp_path):
    """Two COCO results JSONs (COCO's category ids: 18 is dog) as columns, a row per image."""
    shared_file("data/coco128-seg")
    for name, score in (("a", 0.9), ("b", 0.2)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            [{"image_id": i, "category_id": 18, "bbox": [20, 20, 100, 80], "score": score} for i in (1, 2)]))
    written = _run("detection.py", "--out", tmp_path / "figure", "--dpi", "60", "--count", "2", "--side-by-side",
                   "--results", f"PVT-S={tmp_path / 'a.json'}", f"PVT-S + DGE={tmp_path / 'b.json'}")
    assert written == [str(tmp_path / "figure.png"), str(tmp_path / "figure.pdf")]
    assert Path(written[0]).stat().st_size > 5_000


def test_speedup_script_merges_preset_and_detector_files(tmp_path):
    preset = {"cases": [{"preset": "semfpn", "backbone": "pvt_small", "input": [512, 683], "speedup": 1.7,
                         "paper_cpu_speedup": 1.88}]}
    detector = {"cases": [{"backbone": "pvt_small", "input": [800, 1333], "speedup": 1.2, "paper_cpu_speedup": 2.0}]}
    for name, data in (("preset", preset), ("detector", detector)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    written = _run("speedups.py", tmp_path / "preset.json", tmp_path / "detector.json", "--out", tmp_path / "s")
    assert written == [str(tmp_path / "s.png"), str(tmp_path / "s.pdf")]


def test_runtime_and_pr_scripts(tmp_path):
    bench = {"environment": {"cpu": "test", "threads": 2},
             "cases": [{"model": "m", "resolution": r, "batch": 1, "device": "cpu", "dense_ms": r / 10,
                        "dge_ms": r / 20} for r in (256, 512)]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    written = _run("runtime.py", tmp_path / "bench.json", "--out", tmp_path / "runtime")
    assert written == [str(tmp_path / "runtime.png"), str(tmp_path / "runtime.pdf")]
    assert all(Path(p).stat().st_size > 5_000 for p in written)
    np.savez(tmp_path / "pr_histograms.npz", random=np.ones((2, 100)), layer8=np.stack([np.arange(100),
                                                                                         np.arange(100)[::-1]]))
    written = _run("pr_curves.py", "--run", tmp_path, "--out", tmp_path / "pr")
    assert written == [str(tmp_path / "pr.png"), str(tmp_path / "pr.pdf")]
    assert all(Path(p).stat().st_size > 5_000 for p in written)
