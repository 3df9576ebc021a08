"""Shipped DGE models: router (and any fine-tuned) parameters kept in this
package, combined with the dense weights they were distilled from, which are
read from $DGE_EXPLAIN_HOME, from an explicit path, or downloaded by timm."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dge_explain import paths
from dge_explain.models import CheckpointError, from_dense, load_checkpoint


@dataclass(frozen=True)
class ZooEntry:
    dense_model: str        # timm name of the teacher
    phi: tuple[int, ...]
    dense_weights: str      # file under $DGE_EXPLAIN_HOME
    trained: str            # file in this package: the parameters distillation changed
    image_size: int


MODELS = {
    "deit_tiny_dge_s12": ZooEntry("deit_tiny_patch16_224", (1, 2),
                                  "weights/deit_tiny_patch16_224.safetensors",
                                  "deit_tiny_dge_s12.safetensors", 224),
}


def trained_file(name: str) -> Path:
    return Path(str(resources.files(__package__) / MODELS[name].trained))


def recipe(name: str) -> dict:
    """The training configuration stored with a shipped file."""
    with safe_open(str(trained_file(name)), "pt") as handle:
        return json.loads(handle.metadata()["config"])


def load_model(name: str, weights: str | None = None, home: str | None = None,
               device="cpu", trained: str | None = None) -> torch.nn.Module:
    """A shipped DGE model in eval mode.

    weights: the dense teacher's checkpoint; default $DGE_EXPLAIN_HOME/<file>,
    or 'timm' for timm's pretrained download (needs internet); trained: a
    trained.safetensors of `dge-explain train` instead of the shipped file."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; shipped: {', '.join(MODELS)}")
    entry = MODELS[name]
    path = Path(trained) if trained else trained_file(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" + ("" if trained else
                                " (missing from the package: reinstall dge-explain)"))
    if weights == "timm":
        dense = timm.create_model(entry.dense_model, pretrained=True)
    else:
        dense = timm.create_model(entry.dense_model)
        load_checkpoint(dense, weights or paths.home_file(entry.dense_weights, home))
    model = from_dense(dense, phi=entry.phi)
    trained = load_file(str(path))
    unknown = sorted(set(trained) - set(model.state_dict()))
    if unknown:
        raise CheckpointError(f"{path} holds keys the model lacks: {unknown[:5]}")
    missing_routers = [k for k in model.state_dict() if ".dge.router." in k and k not in trained]
    if missing_routers:
        raise CheckpointError(f"{path} lacks router parameters: {missing_routers[:5]}")
    model.load_state_dict(trained, strict=False)
    return model.eval().to(device)
