"""The whole detector of the appendix's Table 7: a (D)PVT(-DGE) multi-scale backbone
inside torchvision's Mask R-CNN with an FPN (random weights: no detector weights
exist here), at 800x1333, batch 1.  Reported: the detector's GMACs beside the
paper's "FLOPs" (mmdetection's counter counts multiply-accumulates: 251G / 185G
for PVT-S / +DGE), the backbone's share, and the CPU latency, dense vs DGE at
budget 0.5 (forced gates), interleaved.

GMACs: torch's FlopCounterMode over the detector (FLOPs / 2; attention counted
in SDPA's math form, as the counter does not see its fused CPU kernel) for
everything but the DGE backbone, whose compiled ops the counter cannot see; that
backbone's MACs come from dge_explain.complexity (the dense backbone is counted
both ways, as a cross-check: the counter sees matmuls and convolutions only).  ``box_score_thresh=0`` keeps the full 100 detections per image,
so the mask head runs as on a real image (random weights score every class
about equally, under the default threshold).

    .venv/bin/python -m dge_explain.bench.detector [--backbones pvt_small ... dpvt_medium] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dge_explain.bench import presets
from dge_explain.bench.runtime import environment, write_report
from dge_explain.bench.timing import measure_interleaved
from dge_explain.complexity import fine_fraction_for_ratio
from dge_explain.models import force_gates, random_fraction
from dge_explain.console import format_table

SIZE = presets.PRESETS["maskrcnn"][0]
HEADER = ["backbone", "detector GMACs", "paper", "backbone GMACs", "dense ms", "DGE ms", "speed-up",
          "paper speed-up (CPU)"]


class PyramidWithFPN(nn.Module):
    """A PVT's four maps (strides 4-32) through an FPN with a max-pooled fifth level,
    named as torchvision's detection heads expect ('0'-'3', 'pool')."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.embed_dims), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        maps = self.body.forward_pyramid(images)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps.values())))


def mask_rcnn(body: nn.Module) -> MaskRCNN:
    torch.manual_seed(1)  # the same FPN and heads for the dense and the DGE backbone
    return MaskRCNN(PyramidWithFPN(body), num_classes=91, min_size=SIZE[0], max_size=SIZE[1],
                    box_score_thresh=0.0).eval()


def _counted_gmacs(fn) -> float:
    # SDPA's fused CPU kernel is invisible to the counter; its math form is counted
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2e9


def measure(name: str, min_time: float, ratio: float = 0.5, **timing) -> dict:
    dense_body, dge_body = presets.build_backbones(name)
    dense, dge = mask_rcnn(dense_body), mask_rcnn(dge_body)
    image = torch.rand(3, *SIZE)
    batched = dense.transform([image])[0].tensors          # resized and padded as the detector runs it
    padded = dge_body.padded_size(*batched.shape[-2:])
    fine = fine_fraction_for_ratio(dge_body, padded, ratio)
    with torch.inference_mode(), force_gates(dge_body, random_fraction(fine, seed=0)):
        # timed first: the counting passes' large attention matrices leave the heap fragmented
        timed = measure_interleaved({"dense": lambda: dense([image]), "dge": lambda: dge([image])}, "cpu",
                                    min_time=min_time, **timing)
        dense_total = _counted_gmacs(lambda: dense([image]))
        dense_body_counted = _counted_gmacs(lambda: dense_body.forward_pyramid(batched))
        dge_total = _counted_gmacs(lambda: dge([image]))
        dge_body_counted = _counted_gmacs(lambda: dge_body.forward_pyramid(batched))
        macs = presets.timed_macs(dense_body, dge_body, tuple(batched.shape[-2:]))
    paper = presets.PAPER["maskrcnn"][name]
    return {"backbone": name, "input": list(SIZE), "batched": list(batched.shape[-2:]), "padded": macs["padded"],
            "dense_padded": macs["dense_padded"], "dense_detector_gmacs": dense_total,
            "dge_detector_gmacs": dge_total - dge_body_counted + macs["dge_gmacs"],
            "dense_backbone_gmacs": macs["dense_gmacs"], "dense_backbone_counted_gmacs": dense_body_counted,
            "dge_backbone_gmacs": macs["dge_gmacs"], "complexity_ratio": macs["complexity_ratio"],
            "budget_ratio": macs["budget_ratio"],
            "dense_ms": timed["dense"].median * 1e3, "dense_iqr_ms": timed["dense"].iqr * 1e3,
            "dge_ms": timed["dge"].median * 1e3, "dge_iqr_ms": timed["dge"].iqr * 1e3,
            "speedup": timed["dense"].median / timed["dge"].median,
            "paper_gflops": [paper[0], paper[1]], "paper_cpu_speedup": paper[2] / paper[3]}


def rows(case: dict) -> list[list[str]]:
    paper = case["paper_gflops"]
    return [[case["backbone"], f"{case['dense_detector_gmacs']:.0f}", f"{paper[0]}G",
             f"{case['dense_backbone_gmacs']:.0f} (counter {case['dense_backbone_counted_gmacs']:.0f})",
             f"{case['dense_ms']:.0f} ± {case['dense_iqr_ms'] / 2:.0f}", "", "", ""],
            [f"{case['backbone']} + DGE", f"{case['dge_detector_gmacs']:.0f}", f"{paper[1]}G",
             f"{case['dge_backbone_gmacs']:.0f}", "", f"{case['dge_ms']:.0f} ± {case['dge_iqr_ms'] / 2:.0f}",
             f"{case['speedup']:.2f}x", f"{case['paper_cpu_speedup']:.2f}x"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(presets.BACKBONES), choices=list(presets.BACKBONES))
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--min-time", type=float, default=10.0, help="seconds of timing per backbone")
    parser.add_argument("--json", help="write the cases here (and the table beside it as .md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases, table = [], []
    for name in args.backbones:
        cases.append(measure(name, args.min_time))
        table += rows(cases[-1])
        print(format_table(HEADER, table[-2:]), flush=True)
    env = environment(torch.device("cpu"))
    text = format_table(HEADER, table)
    print(f"\n{env}\n{text}")
    if args.json:
        write_report(args.json, {"environment": env, "cases": cases},
                     f"# Mask R-CNN + FPN, {SIZE[0]}x{SIZE[1]}, batch 1\n\n{env}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
