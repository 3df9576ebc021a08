"""Op benchmark: compress / decompress / restore throughput next to a plain copy
of the same bytes, and varlen attention next to dense SDPA doing the same FLOPs.

    python -m dge_explain.bench.ops [--device cpu|cuda] [--threads N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from dge_explain import ops
from dge_explain.bench.timing import measure_interleaved
from dge_explain.tables import format_table

# name, batch, token grid (H, W), extra tokens, channels, split sizes
POOL_SHAPES = [
    ("DeiT-S @256, S=4", 16, (16, 16), 1, 384, (4, 2, 1)),
    ("DeiT-S @1024, S=4", 4, (64, 64), 1, 384, (4, 2, 1)),
    ("PVT-S stage 1 @512, S=4", 4, (128, 128), 0, 64, (4, 2, 1)),
]
# name, batch, token grid, extra, heads, head dim, split sizes
ATTENTION_SHAPES = [
    ("DeiT-Ti @224, S=2", 8, (14, 14), 1, 3, 64, (2, 1)),
    ("DeiT-S @512, S=4", 4, (32, 32), 1, 6, 64, (4, 2, 1)),
    ("DeiT-S @1024, S=4", 1, (64, 64), 1, 6, 64, (4, 2, 1)),
]


def _half_fine_gates(batch, grid, region_size, options, generator, device):
    """Gates with about half the regions finest, the rest spread over coarser options."""
    shape = (batch, grid[0] // region_size, grid[1] // region_size)
    fine = torch.rand(shape, generator=generator) < 0.5
    coarse = torch.randint(1, options, shape, generator=generator) if options > 1 else \
        torch.zeros(shape, dtype=torch.long)
    return torch.where(fine, torch.zeros_like(coarse), coarse).to(device)


def bench_pooling(device, dtype, generator):
    rows = []
    for name, batch, grid, extra, channels, splits in POOL_SHAPES:
        size = max(splits)
        indices = _half_fine_gates(batch, grid, size, len(splits), generator, device)
        table = ops.route_to_patches(indices, splits, size, extra)
        x = torch.randn(batch, extra + grid[0] * grid[1], channels, device=device, dtype=dtype)
        comp = ops.compress(x, table)
        q2 = torch.randn_like(comp)
        item = x.element_size()
        cases = {
            "compress": (lambda: ops.compress(x, table), (x.numel() + comp.numel()) * item),
            "decompress": (lambda: ops.decompress(comp, table), (comp.numel() + x.numel()) * item),
            "restore (fused)": (lambda: ops.restore(x, q2, comp, table),
                                (2 * comp.numel() + 2 * x.numel()) * item),
        }
        for op, (fn, moved) in cases.items():
            src = torch.empty(moved // 2 // item, device=device, dtype=dtype).normal_()
            dst = torch.empty_like(src)
            timed = measure_interleaved({"op": fn, "copy": lambda: dst.copy_(src)}, device)
            t_op, t_copy = timed["op"], timed["copy"]
            gbs, copy_gbs = moved / t_op.median / 1e9, moved / t_copy.median / 1e9
            rows.append([name, op, f"{moved / 1e6:.1f}", t_op.ms(), f"{gbs:.1f}",
                         f"{copy_gbs:.1f}", f"{gbs / copy_gbs:.0%}"])
    return rows


def bench_attention(device, dtype, generator):
    rows = []
    for name, batch, grid, extra, heads, head_dim, splits in ATTENTION_SHAPES:
        size = max(splits)
        indices = _half_fine_gates(batch, grid, size, len(splits), generator, device)
        table = ops.route_to_patches(indices, splits, size, extra)
        keys = extra + grid[0] * grid[1]
        q = torch.randn(table.total, heads, head_dim, device=device, dtype=dtype)
        k = torch.randn(batch, heads, keys, head_dim, device=device, dtype=dtype)
        v = torch.randn_like(k)
        per_sample = -(-table.total // batch)  # dense twin: same queries, padded evenly
        q_dense = torch.randn(batch, heads, per_sample, head_dim, device=device, dtype=dtype)
        flops = 4 * table.total * keys * heads * head_dim
        dense_flops = 4 * batch * per_sample * keys * heads * head_dim
        timed = measure_interleaved({
            "varlen": lambda: ops.varlen_attention(q, k, v, table),
            "dense": lambda: F.scaled_dot_product_attention(q_dense, k, v)}, device)
        t_var, t_dense = timed["varlen"], timed["dense"]
        var_rate, dense_rate = flops / t_var.median / 1e9, dense_flops / t_dense.median / 1e9
        rows.append([name, f"{table.total}x{keys}", t_var.ms(), f"{var_rate:.1f}", t_dense.ms(),
                     f"{dense_rate:.1f}", f"{dense_rate / var_rate:.2f}x"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the tables here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)
    info = ops.build_info()
    print(f"backend {info['active_backend']}, torch {info['torch_version']}, device {device}, "
          f"{torch.get_num_threads()} CPU threads, {args.dtype}")
    pool_header = ["shape", "op", "MB moved", "time", "GB/s", "copy GB/s", "of copy"]
    attention_header = ["shape", "L x Nk", "varlen", "GFLOP/s", "dense SDPA", "GFLOP/s",
                        "time per FLOP vs dense"]
    pool, attention = bench_pooling(device, dtype, generator), bench_attention(device, dtype, generator)
    print(format_table(pool_header, pool))
    print()
    print(format_table(attention_header, attention))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "pooling": [dict(zip(pool_header, r)) for r in pool],
                       "attention": [dict(zip(attention_header, r)) for r in attention]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
