"""Wall-clock timing with warm-up, repetitions and robust statistics.

Candidates are timed interleaved (a, b, a, b, ...) so that drift in a shared or
throttling machine hits all of them alike; the median per-call time is reported
with the interquartile range."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median: float   # seconds per call
    iqr: float      # interquartile range of the per-call times
    repeats: int

    def ms(self) -> str:
        return f"{self.median * 1e3:.3f} ms ± {self.iqr * 1e3 / 2:.3f}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(times: list[float]) -> Timing:
    quartiles = statistics.quantiles(times, n=4) if len(times) >= 4 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[2] - quartiles[0], len(times))


def measure_interleaved(candidates: dict[str, Callable[[], object]], device="cpu",
                        min_time: float = 1.0, warmup: int = 3, min_repeats: int = 7,
                        max_repeats: int = 2000) -> dict[str, Timing]:
    """Median per-call time of each candidate, calls alternating between them."""
    device = torch.device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    begin = time.perf_counter()
    repeats = 0
    while repeats < min_repeats or (time.perf_counter() - begin < min_time and repeats < max_repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
        repeats += 1
    return {name: _summary(values) for name, values in times.items()}


def measure(fn: Callable[[], object], device="cpu", **kwargs) -> Timing:
    """Median per-call time of fn()."""
    return measure_interleaved({"fn": fn}, device, **kwargs)["fn"]
