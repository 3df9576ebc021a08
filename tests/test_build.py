"""The build reports what it compiled; DGE_EXPLAIN_REQUIRE_EXT turns a missing
extension into an error; without it the reference fallback is announced."""
import os
import subprocess
import sys

import pytest

from dge_explain import ops
from dge_explain.cli import main

BLOCK_EXTENSION = "import sys; sys.modules['dge_explain._C'] = None; "


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_compiled_backend_is_active():
    info = ops.build_info()
    assert info["extension_loaded"] and info["compiled_cpu"]
    assert info["active_backend"] == "compiled"
    assert info["extension_torch_version"] == info["torch_version"]


@pytest.mark.skipif(os.environ.get("DGE_EXPLAIN_CUDA") != "1",
                    reason="DGE_EXPLAIN_CUDA=1 not set: CUDA kernels not demanded in this build")
def test_cuda_kernels_were_built_when_demanded():
    assert ops.build_info()["compiled_cuda"]


def test_require_ext_makes_a_missing_extension_an_error():
    result = _python(BLOCK_EXTENSION + "import dge_explain.ops", DGE_EXPLAIN_REQUIRE_EXT="1")
    assert result.returncode != 0
    assert "DGE_EXPLAIN_REQUIRE_EXT=1 but the compiled extension dge_explain._C failed to load" in result.stderr


def test_fallback_is_announced_and_still_correct():
    code = BLOCK_EXTENSION + (
        "import warnings, torch; warnings.simplefilter('always');\n"
        "from dge_explain import ops\n"
        "t = ops.route_to_patches(torch.tensor([[[0, 1]]]), (2, 1), 2, 1)\n"
        "print(ops.active_backend(), ops.compress(torch.ones(1, 9, 2), t).sum().item())")
    result = _python(code, DGE_EXPLAIN_REQUIRE_EXT="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reference", "12.0"]
    assert "compiled ops unavailable" in result.stderr


@pytest.fixture
def build_without_cuda(monkeypatch):
    """The loaded extension as a build without CUDA kernels would present it."""
    from types import SimpleNamespace

    from dge_explain.ops import _backend

    monkeypatch.setattr(_backend, "_EXTENSION", SimpleNamespace(with_cuda=False))
    monkeypatch.setattr(_backend, "_warned_cuda", False)
    return _backend


def test_cuda_tensors_without_cuda_kernels_are_said_once(build_without_cuda, monkeypatch):
    import torch

    monkeypatch.setenv("DGE_EXPLAIN_REQUIRE_EXT", "0")
    with pytest.warns(RuntimeWarning, match="CUDA tensors run on the slow pure-PyTorch reference ops: "
                                            "dge_explain._C was built without CUDA kernels"):
        assert not build_without_cuda.compiled_on(torch.device("cuda", 0))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not build_without_cuda.compiled_on(torch.device("cuda", 0)), "said once"
        assert build_without_cuda.compiled_on(torch.device("cpu"))


def test_cuda_tensors_without_cuda_kernels_are_an_error_when_required(build_without_cuda, monkeypatch):
    import torch

    monkeypatch.setenv("DGE_EXPLAIN_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="DGE_EXPLAIN_REQUIRE_EXT=1 but CUDA tensors reached the DGE ops"):
        build_without_cuda.compiled_on(torch.device("cuda"))


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        with ops.use_backend("fast"):
            pass


def test_info_command_self_checks_every_op(capsys):
    assert main(["info", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for op in ("route_to_patches", "compress", "decompress", "restore", "varlen_attention",
               "multigrain_compress", "multigrain_restore", "segmentation_scores"):
        assert f"| {op} " in out
    assert "| NO " not in out


def test_command_line_help_imports_no_heavy_package():
    """`dge-explain --help` and its subcommands' help answer without torch, timm or grad-cam."""
    result = _python(
        "import sys; from dge_explain.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'timm', 'pytorch_grad_cam', 'cv2') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    for command in ([], ["evaluate"], ["train"], ["bench"]):
        help_run = subprocess.run([sys.executable, "-m", "dge_explain", *command, "--help"],
                                  capture_output=True, text=True)
        assert help_run.returncode == 0 and "usage: dge-explain" in help_run.stdout
