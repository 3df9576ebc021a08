"""Distillation smoke runs: a few steps on small images; the loss falls, the
run resumes bit for bit, and the trained parameters are the requested groups."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dge_explain.models import load_checkpoint
from dge_explain.training.distill import TrainConfig, distillation_loss, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny teacher checkpoint and a folder of images."""
    import timm

    root = tmp_path_factory.mktemp("distil")
    teacher = timm.create_model("deit_tiny_patch16_224", depth=2, img_size=64)
    torch.manual_seed(0)
    save_file(teacher.state_dict(), str(root / "teacher.safetensors"))
    images = root / "images"
    images.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(12):
        pixels = (torch.rand(48, 64, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(images / f"{i:03d}.png")
    return root


def _config(setup, out, **overrides):
    values = dict(out=str(out), weights=str(setup / "teacher.safetensors"), images=(str(setup / "images"),),
                  image_size=64, epochs=3, batch_size=4, lr=5e-2, warmup_steps=1, gamma=0.3,
                  checkpoint_every=2, home=str(setup))
    values.update(overrides)
    return TrainConfig(**values)


def _teacher_depth2(monkeypatch):
    import timm

    original = timm.create_model
    monkeypatch.setattr("dge_explain.training.distill.timm.create_model",
                        lambda name, **kw: original(name, depth=2, **kw))


def test_loss_falls_and_only_the_requested_groups_train(setup, tmp_path, monkeypatch):
    _teacher_depth2(monkeypatch)
    result = train(_config(setup, tmp_path / "run", train=("routers",)), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 10)) and result.steps == 9
    assert sum(e["loss"] for e in log[-3:]) < sum(e["loss"] for e in log[:3])
    assert log[-1]["ratio"] < log[0]["ratio"]
    trained = load_file(str(tmp_path / "run" / "trained.safetensors"))
    assert sorted(trained) == sorted(f"blocks.{i}.dge.router.gate.{p}" for i in range(2) for p in ("weight", "bias"))


def test_resume_continues_bit_for_bit(setup, tmp_path, monkeypatch):
    _teacher_depth2(monkeypatch)
    groups = ("routers", "norms", "biases")
    straight = train(_config(setup, tmp_path / "straight", train=groups), progress=False)
    train(_config(setup, tmp_path / "resumed", train=groups, max_steps=4), progress=False)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(_config(setup, tmp_path / "resumed", train=groups), progress=False)
    resumed = train(_config(setup, tmp_path / "resumed", train=groups), resume=True, progress=False)
    assert straight.steps == resumed.steps == 9
    a = load_file(str(tmp_path / "straight" / "trained.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "trained.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "log.jsonl").read_text() != ""
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))
    with pytest.raises(ValueError, match="different configuration"):
        train(_config(setup, tmp_path / "resumed", train=groups, gamma=0.9), resume=True, progress=False)


def test_distillation_loss():
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits, 2.0).abs() < 1e-6
    teacher = torch.randn(4, 10)
    expected = (torch.softmax(teacher / 2, -1) * (torch.log_softmax(teacher / 2, -1)
                - torch.log_softmax(logits / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(distillation_loss(logits, teacher, 2.0), expected)


def test_unknown_group_is_refused(setup, tmp_path, monkeypatch):
    _teacher_depth2(monkeypatch)
    with pytest.raises(ValueError, match=r"selects no parameter"):
        train(_config(setup, tmp_path / "bad", train=("nothing-matches-this",)), progress=False)
    with pytest.raises(ValueError, match=r"at least 1: \{'epochs': 0, 'batch_size': 0\}"):
        train(_config(setup, tmp_path / "zero", epochs=0, batch_size=0), progress=False)
    assert not (tmp_path / "zero").exists(), "refused before any work or output"


@pytest.mark.parametrize("processes", [1, 2])
def test_command_line_and_torchrun(setup, tmp_path, processes):
    """`dge-explain train`, alone and as two DDP processes (gloo)."""
    import os
    import subprocess
    import sys

    import timm

    teacher = timm.create_model("deit_tiny_patch16_224", img_size=64)
    save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    launcher = [sys.executable, "-m", "dge_explain"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(29600 + os.getpid() % 1000), "-m", "dge_explain"]
    result = subprocess.run(
        launcher + ["train", "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "teacher.safetensors"),
                    "--images", str(setup / "images"), "--image-size", "64", "--epochs", "1",
                    "--batch-size", "4", "--max-steps", "2", "--home", str(setup)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    trained = load_file(str(tmp_path / "run" / "trained.safetensors"))
    assert any(".dge.router." in k for k in trained) and any(k.endswith("norm1.weight") for k in trained)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]
