"""Building the shipped models: the dense teacher, converted to DGE, with the
shipped router (and other trained) parameters loaded strictly."""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors import safe_open

from dge_explain.models import CheckpointError, from_dense, load_checkpoint, read_state_dict
from dge_explain.models.data_config import deit_eval_config

from . import dense_weights_path, entry, trained_file


def data_config(name: str) -> dict:
    """The preprocessing a shipped model was distilled and measured with (timm form)."""
    shipped = entry(name)
    return deit_eval_config(shipped.name, shipped.input_size)


def recipe(name: str) -> dict:
    """The training configuration stored with a shipped file."""
    path = trained_file(name)
    try:
        with safe_open(str(path), "pt") as handle:
            return json.loads(handle.metadata()["config"])
    except Exception as error:  # safetensors and json raise their own types
        raise CheckpointError(f"{path} carries no readable training configuration: {error}") from error


def dense_teacher(name: str, weights: str | None = None, home: str | None = None,
                  **create_kwargs) -> torch.nn.Module:
    """The dense model a shipped DGE model was distilled from, in eval mode, with
    the shipped model's preprocessing."""
    shipped = entry(name)
    source = dense_weights_path(name, weights, home)
    if source == "timm":
        dense = timm.create_model(shipped.dense_model, pretrained=True, **create_kwargs)
    else:
        dense = timm.create_model(shipped.dense_model, **create_kwargs)
        load_checkpoint(dense, source)
    dense.pretrained_cfg = {**dense.pretrained_cfg, **data_config(name), "architecture": shipped.dense_model}
    return dense.eval()


def build_shipped(name: str, weights: str | None = None, home: str | None = None,
                  trained: str | None = None) -> torch.nn.Module:
    """A shipped DGE model in eval mode.

    weights: the dense teacher's checkpoint; default $DGE_EXPLAIN_HOME/<file>,
    or 'timm' for timm's pretrained download (needs internet); trained: a
    trained.safetensors of `dge-explain train` instead of the shipped file."""
    shipped = entry(name)
    path = Path(trained) if trained else trained_file(name)
    if not path.is_file() and not trained:
        raise FileNotFoundError(f"{path} is missing from the package: reinstall dge-explain")
    state = read_state_dict(path)  # before the teacher is built: a bad file fails fast, named
    model = from_dense(dense_teacher(name, weights, home), phi=shipped.phi, inplace=True)
    expected = model.state_dict()
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise CheckpointError(f"{path} holds keys the model lacks: {unknown[:5]}")
    missing_routers = [k for k in expected if ".dge.router." in k and k not in state]
    if missing_routers:
        raise CheckpointError(f"{path} lacks router parameters: {missing_routers[:5]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit {name}: {error}") from error
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config(name)}
    return model.eval()
