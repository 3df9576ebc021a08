"""Latency of dense against DGE models over resolutions, batch sizes and devices
(appendix Fig. 6, Tables 7 and 8).

For every case the dense model and its DGE twin (same weights) run interleaved
in one process after a warm-up; medians and interquartile ranges are reported.
DGE gates are forced so that the expected complexity ratio hits --ratio (a
seeded random set of finest regions, the rest coarse), or come from a trained
model (--gates trained, shipped DeiT-Tiny only, on held-out photos so that the
routers see what they were trained for).  Reported per case: the
complexity ratio of the gates actually used (dynamic / static MACs), the
latency ratio (DGE / dense), and the share of the MAC saving that became speed,
(1 - latency ratio) / (1 - complexity ratio).
"""
from __future__ import annotations

import json
import platform
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch.utils.data import Subset

from dge_explain import paths
from dge_explain.bench.timing import measure_interleaved
from dge_explain.complexity import dge_complexity, fine_fraction_for_ratio
from dge_explain.data import LabelledImageFolder, Preprocessing
from dge_explain.models import force_gates, from_dense, load_checkpoint, random_fraction

# benchmark name -> dense timm model (its DGE twin: from_dense, or the pyramid's DGE model below)
MODELS = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "pvt_small": "pvt_small_256",
    "dpvt_small": "dpvt_small_256",
}
PYRAMID_DGE = {"pvt_small": "pvt_dge_s12_small_256", "dpvt_small": "dpvt_dge_s12_small_256"}
HELD_OUT = "data/imagenet-sample"           # its odd half: the images no router was trained on


@dataclass
class Case:
    model: str
    resolution: int
    batch: int
    device: str
    threads: int
    gates: str
    dense_ms: float
    dense_iqr_ms: float
    dge_ms: float
    dge_iqr_ms: float
    complexity_ratio: float
    latency_ratio: float
    saving_realised: float     # (1 - latency ratio) / (1 - complexity ratio)
    fine_fraction: float
    dtype: str = "float32"
    inputs: str = "randn"      # or the held-out photos trained gates are timed on

    def row(self) -> list[str]:
        return [self.model, str(self.resolution), str(self.batch), f"{self.dense_ms:.1f}",
                f"{self.dge_ms:.1f}", f"{self.complexity_ratio:.3f}", f"{self.latency_ratio:.3f}",
                f"{self.saving_realised:.2f}"]


HEADER = ["model", "res", "batch", "dense ms", "DGE ms", "complexity ratio", "latency ratio",
          "saving realised"]


def build_pair(name: str, phi=(1, 2)) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Dense model and its DGE twin with identical weights (random initialisation)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name}; benchmarked models: {', '.join(MODELS)}")
    torch.manual_seed(0)
    if name in PYRAMID_DGE:
        dense = timm.create_model(MODELS[name])
        dge = timm.create_model(PYRAMID_DGE[name])
        load_checkpoint(dge, dense.state_dict(), fresh_routers=True)
    else:
        dense = timm.create_model(MODELS[name], dynamic_img_size=True)
        dge = from_dense(dense, phi=phi)
    return dense.eval(), dge.eval()


def trained_pair(name: str, home=None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The shipped DGE-DeiT-Tiny and its dense teacher (the real weights)."""
    from dge_explain.zoo import DEFAULT_MODEL
    from dge_explain.zoo.build import build_shipped, dense_teacher

    if name != "deit_tiny":
        raise ValueError("trained gates exist for the shipped DeiT-Tiny only (--models deit_tiny)")
    dense = dense_teacher(DEFAULT_MODEL, home=home, dynamic_img_size=True)
    return dense, build_shipped(DEFAULT_MODEL, home=home)


def held_out(preprocessing: Preprocessing, home, limit: int | None):
    """imagenet-sample's odd half (the first `limit` images), or None when it is missing."""
    folder = paths.home(home) / HELD_OUT
    if not folder.is_dir():
        return None
    data = LabelledImageFolder(f"{folder}:odd", preprocessing.classification_transform())
    return Subset(data, range(min(limit, len(data)))) if limit is not None else data


def timing_images(data_home, preprocessing_of, resolution: int, batch: int):
    """The first `batch` held-out images at `resolution` (random ones without the data)."""
    data = held_out(preprocessing_of(resolution), data_home, batch)
    if data is None or len(data) < batch:
        return torch.randn(batch, 3, resolution, resolution), "randn"
    return torch.stack([data[i][0] for i in range(batch)]), "imagenet-sample odd half"


def case_inputs(dense, dge, resolution: int, batch: int, ratio: float | None, trained: bool, home=None):
    """(images, where they come from, the gates' context, the forced fine fraction) of a
    case: trained gates decide on held-out photos (the routers were trained for photos,
    not noise); forced ones are drawn for `ratio` on random inputs."""
    if trained:
        images, inputs = timing_images(home, lambda side: Preprocessing.of(dense, input_size=side), resolution, batch)
        return images, inputs, nullcontext(), float("nan")
    fine = fine_fraction_for_ratio(dge, (resolution, resolution), ratio)
    return (torch.randn(batch, 3, resolution, resolution), "randn",
            force_gates(dge, random_fraction(fine, seed=resolution)), fine)


def run_case(name: str, dense, dge, resolution: int, batch: int, device: torch.device,
             ratio: float | None, min_time: float, trained: bool = False,
             dtype: torch.dtype = torch.float32, home=None, **timing) -> Case:
    """One timed case; the models must already be on `device` in `dtype`.  `timing`:
    measure_interleaved's warmup / min_repeats."""
    images, inputs, gates, fine = case_inputs(dense, dge, resolution, batch, ratio, trained, home)
    images = images.to(device, dtype)
    with torch.inference_mode(), gates:
        timed = measure_interleaved({"dense": lambda: dense(images), "dge": lambda: dge(images)},
                                    device, min_time=min_time, **timing)
        dge(images)
    complexity = float(dge_complexity(dge).ratio)
    latency = timed["dge"].median / timed["dense"].median
    return Case(name, resolution, batch, device.type, torch.get_num_threads(),
                "trained" if trained else f"forced ratio {ratio}", timed["dense"].median * 1e3,
                timed["dense"].iqr * 1e3, timed["dge"].median * 1e3, timed["dge"].iqr * 1e3, complexity,
                latency, (1 - latency) / (1 - complexity), fine, str(dtype).replace("torch.", ""), inputs)


def run_sweep(names, resolutions, batches, device: torch.device, ratio: float | None, min_time: float,
              dtype: torch.dtype = torch.float32, trained: bool = False, home=None, report=print,
              **timing) -> list[Case]:
    """Every (model, resolution, batch) case; a size the DGE's region grid cannot tile,
    or one that runs out of GPU memory, is reported and skipped."""
    from dge_explain.console import format_table

    cases = []
    for name in names:
        dense, dge = trained_pair(name, home) if trained else build_pair(name)
        dense, dge = dense.to(device, dtype), dge.to(device, dtype)
        for resolution in resolutions:
            for batch in batches:
                out_of_memory = False
                try:
                    case = run_case(name, dense, dge, resolution, batch, device, ratio, min_time, trained,
                                    dtype, home, **timing)
                except ValueError as error:
                    report(f"skipped {name} at {resolution}: {error}")
                    continue
                except torch.OutOfMemoryError:
                    out_of_memory = True
                if out_of_memory:  # outside the handler, whose traceback holds the case's tensors
                    report(f"skipped {name} at {resolution}, batch {batch}: out of memory")
                    torch.cuda.empty_cache()
                    continue
                cases.append(case)
                report(format_table(HEADER, [case.row()]).splitlines()[-1])
    return cases


def write_report(path, data: dict, markdown: str) -> None:
    """data as JSON at path, the Markdown beside it (the same name, .md)."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2))
    path.with_suffix(".md").write_text(markdown)


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in handle if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def cases_to_json(cases: list[Case], device: torch.device, path) -> None:
    with open(path, "w") as handle:
        json.dump({"environment": environment(device), "cases": [asdict(c) for c in cases]}, handle,
                  indent=2)
