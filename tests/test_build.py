"""The build reports what it compiled; DGE_EXPLAIN_REQUIRE_EXT turns a missing
extension into an error; without it the reference fallback is announced.  The
wheel of `pip install .` holds every file the package needs and requires the torch
its extension compiled against (.ci/install-check installs and runs it)."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

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


# --- packaging: what `pip install .` puts in site-packages (docs/install.md) ---

ROOT = Path(__file__).resolve().parents[1]


def _tracked(*paths: str) -> list[str]:
    """The files a clean clone has under `paths` (committed or staged; deleted ones left out)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout, so the files of a clean clone are unknown ({error})")
    return sorted(name for name in listed if name and (ROOT / name).is_file())


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory) -> Path:
    """The tracked files of the checkout, copied: a build there sees what a clean clone
    has (no built extension, no untracked files) and leaves the checkout untouched."""
    tree = tmp_path_factory.mktemp("clone")
    for name in _tracked("."):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    return tree


def _build(tree: Path, hook: str, out: Path, **env) -> Path:
    """Run a PEP 517 hook of setuptools in `tree`, as pip does; returns what it made in `out`."""
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; from setuptools import build_meta; "
                               f"print(build_meta.{hook}(sys.argv[1]))", str(out)],
        cwd=tree, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert result.returncode == 0, f"{hook} failed:\n{result.stderr[-3000:]}"
    return out / result.stdout.strip().splitlines()[-1]


def test_wheel_holds_every_file_the_package_needs(clean_tree, tmp_path):
    """Every file of the package in a clean clone (modules, the shipped model's
    .safetensors, py.typed) is in the wheel, and so is the command; the extension is
    left out here (DGE_EXPLAIN_BUILD_EXT=0: compiling takes minutes), .ci/install-check
    builds and loads it."""
    wheel = _build(clean_tree, "build_wheel", tmp_path / "dist", DGE_EXPLAIN_BUILD_EXT="0")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names if name.endswith(".dist-info/entry_points.txt"))
    missing = [name for name in _tracked("dge_explain") if name not in names]
    assert not missing, (f"{wheel.name} lacks {missing}: add them to setup.cfg's [options.package_data] "
                         "(or make their folder a package)")
    assert "dge-explain = dge_explain.cli:main" in entry_points


def test_sdist_holds_every_file_the_build_reads(clean_tree, tmp_path):
    """A wheel built from the sdist (`python -m build`, or pip given the .tar.gz)
    compiles the extension from it: every source and header of the CPU and CUDA
    kernels must be in it. ext/emu/ is left out: the tests build the CUDA emulation
    from a checkout."""
    sdist = _build(clean_tree, "build_sdist", tmp_path / "sdist", DGE_EXPLAIN_CUDA="0")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = [name for name in _tracked("ext", "dge_explain", "setup.py", "setup.cfg", "pyproject.toml")
              if not name.startswith("ext/emu/")]
    missing = [name for name in needed if name not in names]
    assert not missing, f"{sdist.name} lacks {missing}: list them in setup.py's Extension (sources or depends)"


def _torch_pin(requirements: list[str], source: str) -> str:
    pins = [line.replace(" ", "") for line in requirements if re.match(r"torch(?![\w.-])", line)]
    assert len(pins) == 1, f"{source}: expected one torch requirement, found {pins}"
    return pins[0]


def test_wheel_requires_the_torch_its_extension_compiled_against(clean_tree, tmp_path):
    """dge_explain._C links against torch's C++ ABI: a wheel built against one torch
    release must not install beside another (an isolated build compiles against the
    build environment's torch, not the one it will run with)."""
    import torch

    dist_info = _build(clean_tree, "prepare_metadata_for_build_wheel", tmp_path / "meta", DGE_EXPLAIN_CUDA="0")
    requires = [line.split(":", 1)[1].strip() for line in (dist_info / "METADATA").read_text().splitlines()
                if line.startswith("Requires-Dist:")]
    assert _torch_pin(requires, "METADATA") == f"torch=={torch.__version__.split('+')[0]}"


def test_isolated_build_compiles_against_the_locked_torch():
    """A plain (isolated) `pip install .` builds against pyproject.toml's torch: the
    release of requirements.lock, so that the wheel's torch pin matches the lock."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    locked = (ROOT / "requirements.lock").read_text().splitlines()
    assert _torch_pin(requires, "pyproject.toml [build-system] requires") == _torch_pin(locked, "requirements.lock")


def _pip_commands(text: str, python: str) -> list[str]:
    """The pip install commands of a text, with `python` (the venv's interpreter as the
    text spells it) written `python` and --quiet dropped."""
    return [re.sub(r"\s+", " ", line.replace(python, "python").replace(" --quiet", "")).strip()
            for line in text.splitlines() if " -m pip install " in line and not line.lstrip().startswith("#")]


def test_install_check_runs_the_documented_commands():
    """.ci/install-check installs exactly as docs/install.md says."""
    documented = _pip_commands((ROOT / "docs" / "install.md").read_text(), ".venv/bin/python")
    checked = _pip_commands((ROOT / ".ci" / "install-check").read_text(), '"$python"')
    assert documented and documented == checked, f"docs/install.md: {documented}\n.ci/install-check: {checked}"
