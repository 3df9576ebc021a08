"""The shipped DGE models, named as timm names pretrained weights
(``architecture.tag``): each is the router (and any fine-tuned) parameters kept
in this package plus the dense weights they were distilled from, read from
$DGE_EXPLAIN_HOME, an explicit path, or downloaded by timm.

This module is the catalog and imports no torch, so that the command line can
check a model choice and its files at once; ``dge_explain.zoo.build`` loads.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dge_explain import paths


@dataclass(frozen=True)
class ZooEntry:
    architecture: str       # timm entrypoint of the DGE model
    tag: str                # timm's pretrained tag
    dense_model: str        # timm name of the teacher
    phi: tuple[int, ...]
    dense_weights: str      # file under $DGE_EXPLAIN_HOME
    trained: str            # file in this package: the parameters distillation changed
    input_size: int
    aliases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}"


_ENTRIES = (
    # Distilled and measured with DeiT's evaluation crop (0.875), not timm's 0.9 for this teacher.
    ZooEntry("deit_dge_s12_tiny_patch16_224", "distilled", "deit_tiny_patch16_224", (1, 2),
             "weights/deit_tiny_patch16_224.safetensors", "deit_tiny_dge_s12.safetensors", 224,
             aliases=("deit_tiny_dge_s12",)),
)
MODELS = {entry.name: entry for entry in _ENTRIES}
ALIASES = {alias: entry.name for entry in _ENTRIES for alias in entry.aliases}
DEFAULT_MODEL = _ENTRIES[0].name


def shipped_name(name: str) -> str | None:
    """The canonical name of a shipped model (given its name or an alias), else None."""
    return name if name in MODELS else ALIASES.get(name)


def entry(name: str) -> ZooEntry:
    canonical = shipped_name(name)
    if canonical is None:
        raise ValueError(f"unknown model '{name}'; shipped: {', '.join(MODELS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return MODELS[canonical]


def trained_file(name: str) -> Path:
    return Path(str(resources.files(__package__) / entry(name).trained))


def dense_weights_path(name: str, weights: str | None = None, home: str | None = None) -> str:
    """Where the dense teacher's weights come from: a path, 'timm' (download), or
    the file under the data home (FileNotFoundError naming it when missing)."""
    return weights if weights else str(paths.home_file(entry(name).dense_weights, home))


def looks_like_file(name: str) -> bool:
    """A model argument naming a checkpoint file rather than a model."""
    return Path(name).suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt") or "/" in name


def check_choice(name: str, checkpoint: str | None = None, weights: str | None = None,
                 trained: str | None = None, random_weights: bool = False, home: str | None = None,
                 fresh_routers: bool = False, partial: bool = False) -> None:
    """Refuses, before anything is loaded, a combination of model arguments that
    cannot mean what was asked and any file it names that is missing: a timm name
    without a checkpoint would run with random weights, which must be asked for.
    Whether a timm name exists is checked at load time (timm is needed for that)."""
    def missing(path, what):
        if path and path != "timm" and not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")

    if shipped_name(name):
        if checkpoint:
            raise ValueError(f"a checkpoint applies to timm model names; {name} is shipped (give its dense "
                             "teacher with --weights, other trained parameters with --trained)")
        if random_weights or fresh_routers or partial:
            raise ValueError(f"--random-weights, --fresh-routers and --partial apply to timm model names; {name} "
                             "is shipped")
        missing(weights, "dense weights")
        missing(trained, "trained parameters")
        dense_weights_path(name, weights, home)
        return
    if trained or weights:
        raise ValueError("--trained and --weights apply to shipped models "
                         f"({', '.join(MODELS)}); give a timm model a checkpoint (--checkpoint FILE)")
    if looks_like_file(name):
        if checkpoint:
            raise ValueError(f"'{name}' is a file: give either a checkpoint file as the model, or a model "
                             "name with --checkpoint FILE")
        missing(name, "checkpoint")
        return
    if checkpoint and random_weights:
        raise ValueError("--checkpoint and --random-weights exclude each other")
    if (fresh_routers or partial) and not checkpoint:
        raise ValueError("--fresh-routers and --partial say how a checkpoint loads: give one (--checkpoint FILE)")
    if not checkpoint and not random_weights:
        raise ValueError(f"model '{name}' has no trained weights unless you give a checkpoint "
                         "(--checkpoint FILE; Python: checkpoint=FILE); pass --random-weights "
                         "(random_weights=True) to run it with random weights on purpose "
                         f"(shipped models: {', '.join(MODELS)})")
    missing(checkpoint, "checkpoint")


def identity(name: str, checkpoint: str | None = None, home: str | None = None,
             weights: str | None = None, trained: str | None = None, random_weights: bool = False,
             fresh_routers: bool = False, partial: bool = False) -> dict:
    """What decides the model that dge_explain.load_model builds from these
    arguments: names and resolved files with their SHA-256, so that a run folder
    can refuse to mix two models."""
    canonical = shipped_name(name)
    files = {"checkpoint": name if looks_like_file(name) and not canonical else checkpoint, "trained": trained}
    if canonical:
        files["trained"] = trained or str(trained_file(canonical))
        resolved = dense_weights_path(canonical, weights, home)
        files["weights"] = None if resolved == "timm" else resolved
    result = {"model": canonical or name, "weights": "timm" if weights == "timm" else files.get("weights"),
              "random_weights": bool(random_weights), "fresh_routers": bool(fresh_routers), "partial": bool(partial)}
    for key, value in files.items():
        if value:
            path = Path(value).resolve()
            result[key] = str(path)
            result[f"{key}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result.setdefault(key, None)
    return result
