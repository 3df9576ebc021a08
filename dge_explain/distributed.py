"""The process group under torchrun, shared by training and evaluation."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Distributed:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1), with one
    GPU per rank on CUDA (LOCAL_RANK); otherwise a single process, rank 0 of 1."""

    def __init__(self, device: str):
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = torch.device(device)
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
