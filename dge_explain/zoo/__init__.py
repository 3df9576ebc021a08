"""Shipped DGE models: router (and any fine-tuned) parameters kept in this
package, combined with the dense weights they were distilled from, which are
read from $DGE_EXPLAIN_HOME, from an explicit path, or downloaded by timm."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import timm
import torch
from safetensors import safe_open

from dge_explain import paths
from dge_explain.models import CheckpointError, from_dense, load_checkpoint, read_state_dict
from dge_explain.models.data_config import deit_eval_config


@dataclass(frozen=True)
class ZooEntry:
    dense_model: str        # timm name of the teacher
    phi: tuple[int, ...]
    dense_weights: str      # file under $DGE_EXPLAIN_HOME
    trained: str            # file in this package: the parameters distillation changed
    data_config: dict       # the preprocessing it was distilled and measured with (timm form)


MODELS = {
    # Distilled and measured with DeiT's evaluation crop (0.875), not timm's 0.9 for this teacher.
    "deit_tiny_dge_s12": ZooEntry("deit_tiny_patch16_224", (1, 2),
                                  "weights/deit_tiny_patch16_224.safetensors",
                                  "deit_tiny_dge_s12.safetensors",
                                  deit_eval_config("deit_tiny_dge_s12", 224)),
}


def trained_file(name: str) -> Path:
    return Path(str(resources.files(__package__) / MODELS[name].trained))


def recipe(name: str) -> dict:
    """The training configuration stored with a shipped file."""
    path = trained_file(name)
    try:
        with safe_open(str(path), "pt") as handle:
            return json.loads(handle.metadata()["config"])
    except Exception as error:  # safetensors and json raise their own types
        raise CheckpointError(f"{path} carries no readable training configuration: {error}") from error


def _entry(name: str) -> ZooEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; shipped: {', '.join(MODELS)}")
    return MODELS[name]


def dense_weights_path(name: str, weights: str | None = None, home: str | None = None) -> str:
    """Where the dense teacher's weights come from: a path, 'timm' (download), or
    the file under the data home."""
    return weights if weights else str(paths.home_file(_entry(name).dense_weights, home))


def dense_teacher(name: str, weights: str | None = None, home: str | None = None,
                  **create_kwargs) -> torch.nn.Module:
    """The dense model a shipped DGE model was distilled from, in eval mode, with
    the shipped model's preprocessing."""
    entry = _entry(name)
    source = dense_weights_path(name, weights, home)
    if source == "timm":
        dense = timm.create_model(entry.dense_model, pretrained=True, **create_kwargs)
    else:
        dense = timm.create_model(entry.dense_model, **create_kwargs)
        load_checkpoint(dense, source)
    dense.pretrained_cfg = {**dense.pretrained_cfg, **entry.data_config,
                            "architecture": entry.dense_model}
    return dense.eval()


def load_model(name: str, weights: str | None = None, home: str | None = None,
               device="cpu", trained: str | None = None) -> torch.nn.Module:
    """A shipped DGE model in eval mode.

    weights: the dense teacher's checkpoint; default $DGE_EXPLAIN_HOME/<file>,
    or 'timm' for timm's pretrained download (needs internet); trained: a
    trained.safetensors of `dge-explain train` instead of the shipped file."""
    entry = _entry(name)
    path = Path(trained) if trained else trained_file(name)
    if not path.is_file() and not trained:
        raise FileNotFoundError(f"{path} is missing from the package: reinstall dge-explain")
    state = read_state_dict(path)  # before the teacher is built: a bad file fails fast, named
    model = from_dense(dense_teacher(name, weights, home), phi=entry.phi, inplace=True)
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
    model.pretrained_cfg = {**model.pretrained_cfg, **entry.data_config}
    return model.eval().to(device)


def check_choice(name: str, checkpoint: str | None = None, weights: str | None = None,
                 trained: str | None = None, random_weights: bool = False) -> None:
    """Refuses a combination of model arguments that cannot mean what was asked,
    before anything is loaded; a timm name without --checkpoint would run with
    random weights, which must be asked for (--random-weights)."""
    if name in MODELS:
        if checkpoint:
            raise ValueError(f"--checkpoint applies to timm model names; {name} is shipped "
                             "(use --weights for its dense teacher, --trained for other parameters)")
        if random_weights:
            raise ValueError(f"--random-weights applies to timm model names; {name} is shipped")
        return
    if trained or weights:
        raise ValueError("--trained and --weights apply to shipped models "
                         f"({', '.join(MODELS)}); give a timm model --checkpoint")
    if checkpoint and random_weights:
        raise ValueError("--checkpoint and --random-weights exclude each other")
    if not checkpoint and not random_weights:
        raise ValueError(f"model '{name}' has no trained weights unless you give --checkpoint FILE; "
                         "pass --random-weights to run it with random weights on purpose "
                         f"(shipped models: {', '.join(MODELS)})")
    if not timm.is_model(name.partition(".")[0]):
        raise ValueError(f"unknown model '{name}': neither shipped ({', '.join(MODELS)}) nor "
                         "registered with timm")


def load_by_name(name: str, checkpoint: str | None = None, home: str | None = None,
                 weights: str | None = None, trained: str | None = None,
                 random_weights: bool = False) -> torch.nn.Module:
    """A shipped model (with optional dense weights / trained file), or a timm model
    name with a checkpoint (or, asked for, random weights), in eval mode."""
    check_choice(name, checkpoint, weights, trained, random_weights)
    if name in MODELS:
        return load_model(name, weights=weights, home=home, trained=trained)
    model = timm.create_model(name)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model.eval()


def identity(name: str, checkpoint: str | None = None, home: str | None = None,
             weights: str | None = None, trained: str | None = None, random_weights: bool = False) -> dict:
    """What decides the model of load_by_name: names and resolved files with their
    SHA-256, so that a run folder can refuse to mix two models."""
    files = {"checkpoint": checkpoint, "trained": trained}
    if name in MODELS:
        files["trained"] = trained or str(trained_file(name))
        resolved = dense_weights_path(name, weights, home)
        files["weights"] = None if resolved == "timm" else resolved
    result = {"model": name, "weights": "timm" if weights == "timm" else files.get("weights"),
              "random_weights": bool(random_weights)}
    for key, value in files.items():
        if value:
            path = Path(value).resolve()
            result[key] = str(path)
            result[f"{key}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result.setdefault(key, None)
    return result
