"""The ``dge-explain`` command line."""
from __future__ import annotations

import argparse
import sys

import torch


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def cmd_info(args: argparse.Namespace) -> int:
    from dge_explain import ops
    from dge_explain.ops.selfcheck import check_all

    info = ops.build_info()
    print(_format_table(["build", "value"], [[key, str(value)] for key, value in info.items()]))
    targets = [("cpu", torch.float32), ("cpu", torch.float64)]
    if info["compiled_cuda"] and torch.cuda.is_available():
        targets += [("cuda", dtype) for dtype in
                    (torch.float32, torch.float16, torch.bfloat16, torch.float64)]
    results = [r for device, dtype in targets for r in check_all(device, dtype, args.seed)]
    print()
    print(f"Self-check of the '{info['active_backend']}' ops against the pure-PyTorch reference "
          "(fresh random inputs; backward = input gradients; error relative to max(1, |reference|)):")
    print(_format_table(
        ["op", "device", "dtype", "max error", "tolerance", "ok"],
        [[r.op, r.device, r.dtype, f"{r.max_error:.2e}", f"{r.tolerance:.0e}",
          "yes" if r.passed else "NO"] for r in results]))
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"\n{len(failed)} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dge-explain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="build report and a self-check of every op")
    info.add_argument("--seed", type=int, default=None,
                      help="seed of the random inputs (default: fresh each run)")
    info.set_defaults(handler=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
