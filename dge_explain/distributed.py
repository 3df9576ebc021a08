"""The process group under torchrun, shared by training and evaluation."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def resolve_device(name) -> torch.device:
    """The torch.device of a --device value, refused in one line (naming the value)
    when torch cannot read it or sees no such device on this machine."""
    text = str(name)
    try:
        device = torch.device(text)
    except RuntimeError as error:
        kind = text.partition(":")[0]
        if "device type" in str(error):
            raise ValueError(f"--device {text}: {kind!r} is not a torch device type "
                             "(e.g. cpu, cuda, cuda:1, mps)") from None
        raise ValueError(f"--device {text!r}: not a device torch can read (TYPE or TYPE:INDEX, "
                         "e.g. cuda or cuda:1)") from None
    backend = getattr(torch, device.type, None)    # torch.cuda, torch.mps, torch.xpu
    if device.type == "cpu" or not hasattr(backend, "is_available"):
        return device
    label = device.type.upper()
    if not backend.is_available():
        raise ValueError(f"--device {text}: no {label} device is visible to torch "
                         f"(torch.{device.type}.is_available() is False); use --device cpu")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {text}: torch sees {count} {label} device{'s' if count > 1 else ''} "
                         f"({', '.join(f'{device.type}:{i}' for i in range(count))}); use one of those "
                         "or --device cpu")
    return device


class Distributed:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1), with one
    GPU per rank on CUDA (LOCAL_RANK); otherwise a single process, rank 0 of 1."""

    def __init__(self, device: str):
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = resolve_device(device)
        if self.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world
