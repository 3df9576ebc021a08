"""dge-explain info: what was built, and every op checked against its reference."""
from __future__ import annotations

import sys

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "info", "build report and a self-check of every op",
        """
        What was compiled (C++ CPU kernels; CUDA kernels when a toolkit was found) and a
        self-check of every op against its pure-PyTorch reference on fresh random inputs:
        float32 and float64 on the CPU, and every CUDA dtype when a device is visible.
        Exit status 1 when a check fails.""",
        """
        dge-explain info
        dge-explain info --seed 0""")
    parser.add_argument("--seed", type=int, help="seed of the random inputs (default: fresh each run)")
    return parser


def run(args) -> int:
    import torch

    from dge_explain import ops
    from dge_explain.console import format_table
    from dge_explain.ops.selfcheck import check_all

    info = ops.build_info()
    print(format_table(["build", "value"], [[key, str(value)] for key, value in info.items()]))
    targets = [("cpu", torch.float32), ("cpu", torch.float64)]
    if info["compiled_cuda"] and torch.cuda.is_available():
        targets += [("cuda", dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)]
    results = [r for device, dtype in targets for r in check_all(device, dtype, args.seed)]
    print()
    print(f"Self-check of the '{info['active_backend']}' ops against the pure-PyTorch reference "
          "(fresh random inputs; backward = input gradients; error relative to max(1, |reference|)):")
    print(format_table(
        ["op", "device", "dtype", "max error", "tolerance", "ok"],
        [[r.op, r.device, r.dtype, f"{r.max_error:.2e}", f"{r.tolerance:.0e}",
          "yes" if r.passed else "NO"] for r in results]))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"\n{len(failed)} check(s) failed", file=sys.stderr)
    return 1 if failed else 0
