"""Safe, strict checkpoint loading.

Files are read with safetensors, or with ``torch.load(weights_only=True)`` where
only tensors, containers and an ``argparse.Namespace`` (the original training
script's 'args') may be unpickled.  A training checkpoint ({'model': ...,
'optimizer': ..., 'args': ...}) or a raw state dict both work; 'model' is used,
never 'model_ema'.  Before loading, a fused timm ``attn.qkv`` is split into the
``attn.q`` / ``attn.kv`` of DGE models, and positional embeddings are resampled
to the model's grid (by the model family's adapter).  Missing, unexpected or mis-shaped keys are an error that
names them, unless the caller asks for partial loading.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .families import find_adapter


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and keys."""


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)   # router keys left as initialised (fresh_routers)

    def problems(self) -> list[str]:
        lines = []
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", self.mismatched)):
            if names:
                shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
                lines.append(f"{title}: {shown}")
        return lines


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors, or a torch file read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # torch's note on pickle protocols names its own source line and concerns no user
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects that are not safe to unpickle ({_refused(path, error)}); only tensors, "
            "containers and argparse.Namespace are read. If you trust the file, save its state dict "
            "again (e.g. as .safetensors)") from error
    except Exception as error:
        raise CheckpointError(f"{path} could not be read as a torch checkpoint: {error}") from error
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and _is_state_dict(obj[key]):
            return dict(obj[key])
    if _is_state_dict(obj):
        return dict(obj)
    keys = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, or one under "
                          f"'model' or 'state_dict'); found {keys}")


ALLOWED_GLOBALS = {f"{argparse.Namespace.__module__}.{argparse.Namespace.__qualname__}"}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _refused(path: Path, error: Exception) -> str:
    """What torch's weights-only unpickler refused: every unsafe global a torch.save
    file names (listed without unpickling), else the global or reason in torch's
    message (which names one, between escape codes and advice)."""
    try:
        names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - ALLOWED_GLOBALS)
    except Exception:  # not a zip checkpoint: torch's message is all there is
        names = []
    text = ANSI_ESCAPE.sub("", str(error))
    names = names or list(dict.fromkeys(re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text)))
    if names:
        return f"refused global{'s' if len(names) > 1 else ''}: {', '.join(names)}"
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return "torch's weights-only unpickler: " + (reason.group(1) if reason else text.strip().splitlines()[0]).strip()


# a wrapper's prefix on every key of the state dict it saved
WRAPPER_PREFIXES = {"module.": "DistributedDataParallel or DataParallel", "_orig_mod.": "torch.compile"}


def _strip_wrapper_prefix(state: dict, expected: Mapping[str, torch.Tensor], report: LoadReport) -> str | None:
    """Removes a wrapper's prefix found on every key (noted in report.converted);
    returns what to say of one found on some keys only, which is left to the key check."""
    for prefix, wrapper in WRAPPER_PREFIXES.items():
        if any(k.startswith(prefix) for k in expected):
            continue
        marked = [k for k in state if k.startswith(prefix)]
        if marked and len(marked) == len(state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            state.clear()
            state.update(stripped)
            report.converted.append(f"prefix '{prefix}' removed from all {len(marked)} keys "
                                    f"(a state dict saved through {wrapper})")
        elif marked:
            return (f"{len(marked)} of {len(state)} keys start with '{prefix}' (as {wrapper} saves them) "
                    f"and the rest do not, so the prefix was left on (e.g. {marked[0]})")
    return None


def _split_fused_qkv(state: dict, expected: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    for key in [k for k in state if k.endswith(".attn.qkv.weight") or k.endswith(".attn.qkv.bias")]:
        prefix, kind = key[: -len(".qkv.weight")] if key.endswith("weight") else key[: -len(".qkv.bias")], \
            key.rsplit(".", 1)[1]
        q_key, kv_key = f"{prefix}.q.{kind}", f"{prefix}.kv.{kind}"
        if q_key not in expected or kv_key not in expected:
            continue
        fused = state.pop(key)
        dim = fused.shape[0] // 3
        state[q_key], state[kv_key] = fused[:dim], fused[dim:]
        report.converted.append(f"{key} -> {q_key} + {kv_key}")


def _is_router_key(key: str) -> bool:
    return ".dge." in f".{key}"


def _misfit(name: str, model: nn.Module, report: LoadReport, lacking_routers: list[str],
            mixed_prefix: str | None) -> str:
    """The refusal of a checkpoint that does not fit, with what the user can do from
    the command line and from Python; lacking_routers: the model's router keys where
    the checkpoint holds none (a dense model's)."""
    lines = LoadReport(name, missing=[k for k in report.missing if k not in lacking_routers],
                       unexpected=report.unexpected, mismatched=report.mismatched).problems()
    lines += [mixed_prefix] if mixed_prefix else []
    partial = "Load the matching keys anyway with --partial (Python: partial=True)"
    if not lacking_routers:
        return f"checkpoint {name} does not fit {type(model).__name__}: " + "; ".join(lines) + f". {partial}"
    blocks = len({k.partition(".dge.")[0] for k in lacking_routers})
    return (f"checkpoint {name} holds no DGE router weights (a dense model's checkpoint) but "
            f"{type(model).__name__} has routers in {blocks} blocks: start them from their initialisation "
            "with --fresh-routers (Python: fresh_routers=True); their gating maps mean nothing until trained "
            "(dge-explain train)" + "".join(f"; {line}" for line in lines) + (f". {partial}" if lines else ""))


def load_checkpoint(model: nn.Module, source, partial: bool = False,
                    fresh_routers: bool = False) -> LoadReport:
    """Load a checkpoint file (or a state dict) into ``model``.

    partial: load what matches and report the rest instead of failing;
    fresh_routers: a dense checkpoint into a DGE model: the routers (and their
    ``dge.splits``) may be missing and keep their initialisation (report.initialised).
    A state dict saved through DistributedDataParallel, DataParallel or torch.compile
    (every key prefixed) loads with the prefix removed.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    expected = model.state_dict()
    report = LoadReport(name)
    mixed_prefix = _strip_wrapper_prefix(state, expected, report)
    _split_fused_qkv(state, expected, report)
    adapter = find_adapter(model)
    if adapter is not None:   # any other module loads its keys as they are
        adapter.convert_checkpoint(state, model, report)

    routers = [k for k in expected if _is_router_key(k)]
    if fresh_routers:
        report.initialised = [k for k in routers if k not in state]
    report.missing = [k for k in expected if k not in state and not (fresh_routers and _is_router_key(k))]
    report.unexpected = [k for k in state if k not in expected]
    report.mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                         for k in state if k in expected and state[k].shape != expected[k].shape]
    if report.problems() and not partial:
        dense = not fresh_routers and not any(_is_router_key(k) for k in state)
        raise CheckpointError(_misfit(name, model, report, routers if dense else [], mixed_prefix))
    usable = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    try:
        model.load_state_dict(usable, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {name}: {error}") from error
    report.loaded = sorted(usable)
    return report


def checkpoint_architecture(path: str | os.PathLike) -> str:
    """The timm model name a checkpoint file names for itself: the original DGE
    implementation's ``args.model`` (torch files) or an ``architecture`` entry of a
    safetensors file's metadata; a CheckpointError saying what to give otherwise."""
    path = Path(path)
    name = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                name = (handle.metadata() or {}).get("architecture")
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    else:
        read_state_dict(path)   # a refused or unreadable file is reported as such first
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        args = obj.get("args") if isinstance(obj, Mapping) else None
        name = getattr(args, "model", None)
    if not name:
        raise CheckpointError(f"{path} does not name its model (no args.model, no 'architecture' metadata): "
                              "give the model name and the file as its checkpoint (--model NAME --checkpoint "
                              f"{path}; Python: load_model(NAME, checkpoint=...))")
    return str(name)
