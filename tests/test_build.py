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
