"""Backbone latency at the input sizes of the appendix's Tables 7 and 8
(``dge-explain bench --preset maskrcnn|semfpn``): each multi-scale backbone
(``forward_pyramid``, random weights) dense and with DGE at budget 0.5 (forced
gates, as the runtime benchmark; ragged borders, so that it pads to the dense
model's multiple of 32 as a detector feeds it), timed interleaved, with its GMACs, the latency
ratio against the complexity ratio, and the paper's figures beside them.

The paper's latencies and FLOPs are of the whole detector / segmenter; its
speed-up (dense / DGE latency) is what a backbone's speed-up should beat here.
"""
from __future__ import annotations

import timm
import torch

from dge_explain.bench.timing import measure_interleaved
from dge_explain.complexity import dense_macs, dge_complexity, fine_fraction_for_ratio
from dge_explain.models import force_gates, load_checkpoint, random_fraction
from dge_explain.models.encoder import ragged_borders

# preset -> input sizes (height, width), batch 1
PRESETS = {"maskrcnn": [(800, 1333)], "semfpn": [(512, 512), (512, 683)]}
# benchmark name -> (dense timm model, its DGE twin, Φ = {1, 2})
BACKBONES = {"pvt_small": ("pvt_small_256", "pvt_dge_s12_small_256"),
             "pvt_medium": ("pvt_medium_256", "pvt_dge_s12_medium_256"),
             "dpvt_small": ("dpvt_small_256", "dpvt_dge_s12_small_256"),
             "dpvt_medium": ("dpvt_medium_256", "dpvt_dge_s12_medium_256")}
# the appendix, Table 7 (Mask R-CNN 1x, COCO) and Table 8 (Semantic-FPN, ADE20K), gamma = 0.5:
# (dense GFLOPs, DGE GFLOPs, dense CPU s, DGE CPU s, dense GPU ms, DGE GPU ms)
PAPER = {
    "maskrcnn": {"pvt_small": (251, 185, 0.88, 0.44, 33, 26), "dpvt_small": (186, 147, 1.09, 0.72, 50, 34),
                 "pvt_medium": (339, 228, 1.26, 0.62, 73, 40), "dpvt_medium": (236, 169, 1.80, 1.24, 75, 50)},
    "semfpn": {"pvt_small": (226, 155, 1.35, 0.72, 65, 42), "dpvt_small": (157, 121, 1.47, 0.86, 55, 32),
               "pvt_medium": (316, 202, 1.91, 1.10, 100, 64), "dpvt_medium": (209, 148, 1.99, 1.26, 110, 50)},
}
HEADER = ["backbone", "input", "dense GMACs", "DGE GMACs", "complexity ratio", "dense ms", "DGE ms",
          "latency ratio", "speed-up", "paper speed-up (CPU)", "paper FLOPs ratio"]


def build_backbones(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Dense backbone and its DGE twin (same weights, fresh routers, ragged borders),
    no classifier."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name}; presets cover {', '.join(BACKBONES)}")
    torch.manual_seed(0)
    dense_name, dge_name = BACKBONES[name]
    dense = timm.create_model(dense_name, num_classes=0)
    dge = timm.create_model(dge_name, num_classes=0)
    load_checkpoint(dge, dense.state_dict(), fresh_routers=True)
    ragged_borders(dge)
    return dense.eval(), dge.eval()


def timed_macs(dense, dge, size: tuple[int, int]) -> dict:
    """MACs of the two forwards a case times, after the DGE model's last forward at
    `size`: each model pads to its own multiple, as a detector would (32 for both
    with ragged borders, else 32 x region size for the DGE one), so the complexity
    ratio compares what ran; the gates' budget ratio (against the DGE model's own finest pass) beside it."""
    complexity = dge_complexity(dge)
    dense_padded = dense.padded_size(*size)
    dense_gmacs = dense_macs(dense, dense_padded) / 1e9
    dge_gmacs = float(complexity.dynamic.mean()) / 1e9
    return {"padded": list(dge.padded_size(*size)), "dense_padded": list(dense_padded),
            "dense_gmacs": dense_gmacs, "dge_gmacs": dge_gmacs, "complexity_ratio": dge_gmacs / dense_gmacs,
            "budget_ratio": float(complexity.ratio)}


def run_backbone(preset: str, name: str, dense, dge, size: tuple[int, int], device: torch.device,
                 min_time: float, ratio: float = 0.5, **timing) -> dict:
    """One timed case; `timing`: measure_interleaved's warmup / min_repeats."""
    images = torch.randn(1, 3, *size, device=device)
    padded = dge.padded_size(*size)
    fine = fine_fraction_for_ratio(dge, padded, ratio)
    with torch.inference_mode(), force_gates(dge, random_fraction(fine, seed=size[0] * size[1])):
        timed = measure_interleaved({"dense": lambda: dense.forward_pyramid(images),
                                     "dge": lambda: dge.forward_pyramid(images)}, device, min_time=min_time,
                                    **timing)
        dge.forward_pyramid(images)
    latency = timed["dge"].median / timed["dense"].median
    paper = PAPER[preset].get(name)
    return {"preset": preset, "backbone": name, "input": list(size), **timed_macs(dense, dge, size),
            "fine_fraction": fine,
            "dense_ms": timed["dense"].median * 1e3, "dense_iqr_ms": timed["dense"].iqr * 1e3,
            "dge_ms": timed["dge"].median * 1e3, "dge_iqr_ms": timed["dge"].iqr * 1e3,
            "latency_ratio": latency, "speedup": 1 / latency,
            "paper_cpu_speedup": paper[2] / paper[3] if paper else None,
            "paper_flops_ratio": paper[1] / paper[0] if paper else None}


def row(case: dict) -> list[str]:
    spread = lambda median, iqr: f"{median:.0f} ± {iqr / 2:.0f}"
    return [case["backbone"], "x".join(map(str, case["input"])), f"{case['dense_gmacs']:.1f}",
            f"{case['dge_gmacs']:.1f}", f"{case['complexity_ratio']:.3f}",
            spread(case["dense_ms"], case["dense_iqr_ms"]), spread(case["dge_ms"], case["dge_iqr_ms"]),
            f"{case['latency_ratio']:.3f}", f"{case['speedup']:.2f}x",
            f"{case['paper_cpu_speedup']:.2f}x" if case["paper_cpu_speedup"] else "",
            f"{case['paper_flops_ratio']:.3f}" if case["paper_flops_ratio"] else ""]


def run_preset(preset: str, names: list[str], device: torch.device, min_time: float, report=print,
               **timing) -> list[dict]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset}; presets: {', '.join(PRESETS)}")
    cases = []
    for name in names:
        dense, dge = build_backbones(name)
        dense, dge = dense.to(device), dge.to(device)
        for size in PRESETS[preset]:
            cases.append(run_backbone(preset, name, dense, dge, size, device, min_time, **timing))
            report(cases[-1])
    return cases
