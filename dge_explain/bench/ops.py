"""Op benchmark: compress / decompress / restore throughput next to a plain copy
of the same bytes, varlen attention next to dense SDPA doing the same FLOPs, and
the deformable point attention next to its grid_sample reference (the same
bilinear samples through PyTorch's own kernel).

    python -m dge_explain.bench.ops [--device cpu|cuda] [--threads N] [--rounds N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dge_explain import ops
from dge_explain.ops import reference
from dge_explain.bench.timing import measure_interleaved
from dge_explain.console import format_table

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
# name, batch, value map (H, W), heads, head dim, points, split sizes (None: every token a query)
DEFORMABLE_SHAPES = [
    ("DPVT-S stage 1 @512", 1, (128, 128), 1, 64, 4, None),
    ("DPVT-S stage 3 @512, DGE S=2", 1, (32, 32), 5, 64, 4, (2, 1)),
    ("DPVT-S stage 2 @800x1344, DGE S=2", 1, (100, 168), 2, 64, 4, (2, 1)),
]


def _half_fine_gates(batch, grid, region_size, options, generator, device):
    """Gates with about half the regions finest, the rest spread over coarser options."""
    shape = (batch, grid[0] // region_size, grid[1] // region_size)
    fine = torch.rand(shape, generator=generator) < 0.5
    coarse = torch.randint(1, options, shape, generator=generator) if options > 1 else \
        torch.zeros(shape, dtype=torch.long)
    return torch.where(fine, torch.zeros_like(coarse), coarse).to(device)


def bench_pooling(device, dtype, generator, min_time: float) -> list[dict]:
    """One record per (shape, op): bytes moved and the op's and the copy's median times."""
    records = []
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
            timed = measure_interleaved({"op": fn, "copy": lambda: dst.copy_(src)}, device,
                                        min_time=min_time)
            records.append({"shape": name, "op": op, "moved": moved, "op_time": timed["op"],
                            "copy_time": timed["copy"]})
    return records


def bench_attention(device, dtype, generator, min_time: float) -> list[dict]:
    """One record per shape: FLOPs and median times of varlen and dense attention."""
    records = []
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
        timed = measure_interleaved({
            "varlen": lambda: ops.varlen_attention(q, k, v, table),
            "dense": lambda: F.scaled_dot_product_attention(q_dense, k, v)}, device,
            min_time=min_time)
        records.append({"shape": name, "size": f"{table.total}x{keys}",
                        "flops": 4 * table.total * keys * heads * head_dim,
                        "dense_flops": 4 * batch * per_sample * keys * heads * head_dim,
                        "varlen_time": timed["varlen"], "dense_time": timed["dense"]})
    return records


def bench_deformable(device, dtype, generator, min_time: float) -> list[dict]:
    """One record per shape: the bytes the bilinear samples gather, and the median
    times of the compiled op and of the grid_sample reference."""
    records = []
    for name, batch, grid, heads, head_dim, points, splits in DEFORMABLE_SHAPES:
        if splits is None:
            offsets = torch.arange(batch + 1) * grid[0] * grid[1]
            centres = ops.grid_centres(*grid).repeat(batch, 1)
        else:
            size = max(splits)
            table = ops.route_to_patches(_half_fine_gates(batch, grid, size, len(splits), generator, device),
                                         splits, size, 0)
            offsets, centres = table.offsets.cpu(), ops.patch_centres(table).cpu()
        rows = len(centres)
        value = torch.randn(batch, *grid, heads, head_dim, generator=generator).to(device, dtype)
        shifts = torch.randn(rows, heads, points, 2, generator=generator) * 2
        locations = (centres.view(-1, 1, 1, 2) + shifts).to(device, dtype)
        weights = torch.rand(rows, heads, points, generator=generator).softmax(-1).to(device, dtype)
        offsets = offsets.to(device)
        timed = measure_interleaved({
            "op": lambda: ops.deformable_attention(value, locations, weights, offsets),
            "reference": lambda: reference.deformable_attention(value, locations, weights, offsets)},
            device, min_time=min_time)
        records.append({"shape": name, "rows": rows, "gathered": rows * heads * points * 4 * head_dim * value.element_size(),
                        "op_time": timed["op"], "reference_time": timed["reference"]})
    return records


def deformable_rows(rounds: list[list[dict]]) -> list[list[str]]:
    rows = []
    for records in zip(*rounds):  # one shape, every round
        first = records[0]
        rows.append([first["shape"], str(first["rows"]), _time_cell(records, "op_time"),
                     _spread([first["gathered"] / r["op_time"].median / 1e9 for r in records], "{:.1f}"),
                     _time_cell(records, "reference_time"),
                     _spread([r["reference_time"].median / r["op_time"].median for r in records], "{:.1f}x")])
    return rows


def _of_copy(record: dict) -> float:
    return record["copy_time"].median / record["op_time"].median


def _per_flop(record: dict) -> float:
    """Time per FLOP of varlen attention relative to dense."""
    return (record["varlen_time"].median / record["flops"]) / \
        (record["dense_time"].median / record["dense_flops"])


def _spread(values: list[float], fmt: str) -> str:
    """The value of a single round, or the median and range over rounds."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _time_cell(records: list[dict], key: str) -> str:
    """One round's time with its spread, or the median time over rounds."""
    if len(records) == 1:
        return records[0][key].ms()
    return f"{statistics.median(r[key].median for r in records) * 1e3:.3f} ms"


def pooling_rows(rounds: list[list[dict]]) -> list[list[str]]:
    rows = []
    for records in zip(*rounds):  # one shape and op, every round
        first = records[0]
        gbs = [first["moved"] / r["op_time"].median / 1e9 for r in records]
        copy_gbs = [first["moved"] / r["copy_time"].median / 1e9 for r in records]
        rows.append([first["shape"], first["op"], f"{first['moved'] / 1e6:.1f}",
                     _time_cell(records, "op_time"), _spread(gbs, "{:.1f}"), _spread(copy_gbs, "{:.1f}"),
                     _spread([_of_copy(r) for r in records], "{:.0%}")])
    return rows


def attention_rows(rounds: list[list[dict]]) -> list[list[str]]:
    rows = []
    for records in zip(*rounds):  # one shape, every round
        first = records[0]
        rows.append([first["shape"], first["size"], _time_cell(records, "varlen_time"),
                     _spread([first["flops"] / r["varlen_time"].median / 1e9 for r in records], "{:.1f}"),
                     _time_cell(records, "dense_time"),
                     _spread([first["dense_flops"] / r["dense_time"].median / 1e9 for r in records],
                             "{:.1f}"),
                     _spread([_per_flop(r) for r in records], "{:.2f}x")])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole benchmark; with several rounds each cell is the "
                             "median over rounds with the range in brackets")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the tables here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    info = ops.build_info()
    print(f"backend {info['active_backend']}, torch {info['torch_version']}, device {device}, "
          f"{torch.get_num_threads()} CPU threads, {args.dtype}, {args.rounds} round(s)")
    pool_rounds, attention_rounds, deformable_rounds = [], [], []
    for _ in tqdm(range(args.rounds), desc="rounds", disable=args.rounds == 1):
        generator = torch.Generator().manual_seed(args.seed)  # the same gates every round
        pool_rounds.append(bench_pooling(device, dtype, generator, args.min_time))
        attention_rounds.append(bench_attention(device, dtype, generator, args.min_time))
        deformable_rounds.append(bench_deformable(device, dtype, generator, args.min_time))
    pool_header = ["shape", "op", "MB moved", "time", "GB/s", "copy GB/s", "of copy"]
    attention_header = ["shape", "L x Nk", "varlen", "varlen GFLOP/s", "dense SDPA", "dense GFLOP/s",
                        "time per FLOP vs dense"]
    deformable_header = ["shape", "rows", "deformable", "gathered GB/s", "grid_sample reference",
                         "speed-up over reference"]
    pool, attention = pooling_rows(pool_rounds), attention_rows(attention_rounds)
    deformable = deformable_rows(deformable_rounds)
    print(format_table(pool_header, pool))
    print()
    print(format_table(attention_header, attention))
    print()
    print(format_table(deformable_header, deformable))
    if args.json:
        raw = {"pooling": [[{"shape": r["shape"], "op": r["op"], "bytes": r["moved"],
                             "op_s": r["op_time"].median, "copy_s": r["copy_time"].median}
                            for r in records] for records in pool_rounds],
               "attention": [[{"shape": r["shape"], "flops": r["flops"], "dense_flops": r["dense_flops"],
                               "varlen_s": r["varlen_time"].median, "dense_s": r["dense_time"].median}
                              for r in records] for records in attention_rounds],
               "deformable": [[{"shape": r["shape"], "rows": r["rows"], "bytes_gathered": r["gathered"],
                                "op_s": r["op_time"].median, "reference_s": r["reference_time"].median}
                               for r in records] for records in deformable_rounds]}
        with open(args.json, "w") as handle:
            json.dump({"info": info, "pooling": [dict(zip(pool_header, r)) for r in pool],
                       "attention": [dict(zip(attention_header, r)) for r in attention],
                       "deformable": [dict(zip(deformable_header, r)) for r in deformable],
                       "rounds": raw}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
