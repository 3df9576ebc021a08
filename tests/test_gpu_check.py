"""The GPU check (`make gpu-check`) run on the CPU ops: its report, its verdicts and
its counting of the CUDA tests.  The real run needs a GPU and is not a test."""
import json

import pytest
import torch

from dge_explain.bench import gpu_check
from dge_explain.bench import ops as op_bench
from dge_explain.ops import _backend

SMALL = ["--device", "cpu", "--skip-tests", "--models", "deit_tiny", "--resolutions", "64",
         "--batch-sizes", "1", "--dtypes", "float32", "--timing-dtypes", "float32", "--min-time", "0.01"]


@pytest.fixture
def small_op_shapes(monkeypatch):
    monkeypatch.setattr(op_bench, "POOL_SHAPES", [("tiny", 2, (4, 4), 1, 8, (2, 1))])
    monkeypatch.setattr(op_bench, "ATTENTION_SHAPES", [("tiny", 2, (4, 4), 1, 2, 8, (2, 1))])
    monkeypatch.setattr(op_bench, "DEFORMABLE_SHAPES", [("tiny", 2, (4, 4), 2, 8, 3, (2, 1))])


def test_the_check_writes_json_and_markdown(tmp_path, small_op_shapes):
    assert gpu_check.main(["--out", str(tmp_path), *SMALL]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    (parity,) = report["parity"]
    assert parity["model"] == "deit_tiny" and parity["passed"] and parity["relative_error"] < 1e-4
    (case,) = report["model_timings"]["float32"]
    assert (case["model"], case["resolution"], case["batch"], case["dtype"]) == ("deit_tiny", 64, 1, "float32")
    assert 0 < case["complexity_ratio"] < 1 and case["dense_ms"] > 0 and case["dge_ms"] > 0
    assert {"varlen GFLOP/s", "dense GFLOP/s"} <= set(report["op_timings"]["float32"]["attention"][0])
    assert json.loads((tmp_path / "bench-float32.json").read_text())["cases"] == [case]
    markdown = (tmp_path / "gpu-check.md").read_text()
    for heading in ("## DGE models against the reference ops (float64)", "## Ops (float32)",
                    "## Dense vs DGE at budget 0.5 (float32)"):
        assert heading in markdown


class _WrongCompress:
    """The compiled kernels with compress off by 1 %."""

    def __init__(self, kernels):
        self._kernels = kernels

    def __getattr__(self, name):
        if name == "compress":
            return lambda *args: self._kernels.compress(*args) * 1.01
        return getattr(self._kernels, name)


def test_a_wrong_op_fails_the_parity_check(tmp_path, small_op_shapes, monkeypatch):
    right = _backend.kernels()
    monkeypatch.setattr(_backend, "kernels", lambda: _WrongCompress(right))
    assert gpu_check.main(["--out", str(tmp_path), *SMALL]) == 1
    (parity,) = json.loads((tmp_path / "gpu-check.json").read_text())["parity"]
    assert not parity["passed"] and parity["relative_error"] > parity["tolerance"]
    assert "| NO " in (tmp_path / "gpu-check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the refusal cannot be shown")
def test_without_a_gpu_it_refuses_with_the_reason(tmp_path):
    with pytest.raises(SystemExit, match="gpu-check needs a visible CUDA device"):
        gpu_check.main(["--out", str(tmp_path)])


def test_the_goals_are_judged_on_batch_one():
    def case(resolution, ratio, batch=1):
        return {"model": "deit_small", "dtype": "bfloat16", "resolution": resolution, "batch": batch,
                "latency_ratio": ratio}

    lines = gpu_check.goals([case(224, 1.2), case(512, 0.9), case(1024, 0.6), case(1024, 2.0, batch=32)])
    assert lines == ["deit_small (bfloat16): DGE faster than dense at batch 1 from 512 px up: yes "
                     "(latency ratios 512: 0.90, 1024: 0.60)",
                     "deit_small (bfloat16): speed-up at 1024 px, batch 1: 1.67x (meets the 1.5x goal)"]
    assert "no (latency ratios 512: 1.10)" in gpu_check.goals([case(512, 1.1)])[0]


def test_the_cuda_tests_are_counted_from_pytest(tmp_path, monkeypatch):
    tests = tmp_path / "test_sample.py"
    tests.write_text("import pytest\n"
                     "def test_ok(): pass\n"
                     "def test_wrong(): assert False\n"
                     "@pytest.mark.skip(reason='x')\n"
                     "def test_skipped(): pass\n"
                     "def test_emulated_left_out(): assert False\n")
    monkeypatch.setattr(gpu_check, "CUDA_TESTS", [str(tests)])
    result = gpu_check.run_cuda_tests(tmp_path)
    assert (result["passed"], result["failed"], result["skipped"], result["errors"]) == (1, 1, 1, 0)
    assert result["returncode"] == 1 and "test_wrong" in (tmp_path / "cuda-tests.log").read_text()
