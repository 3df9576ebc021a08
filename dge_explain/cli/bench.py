"""dge-explain bench: latency of dense against DGE models (Fig. 6, Tables 7-8)."""
from __future__ import annotations

import sys

from . import common

RESOLUTIONS = [224, 256, 384, 448, 512, 768, 1024]


def add_parser(commands):
    parser = common.subcommand(
        commands, "bench", "latency of dense vs DGE models over resolutions (Fig. 6, Tables 7-8)",
        """
        Dense and DGE models timed in turn in one process (interleaved rounds), with their MACs:
        the latency ratio against the complexity ratio. Forced gates reach --ratio exactly;
        trained gates are the shipped model's own. --preset times the multi-scale backbones at
        the appendix's detection (maskrcnn, 800x1333) or segmentation (semfpn) input sizes.
        --peers sets DGE beside ToMe and EViT on the same weights at matched MACs ratios: top-1
        on imagenet-sample's odd half (DeiT-Ti, real weights), MACs and latency of every
        variant, timed interleaved (DeiT-S: random weights, speed only).""",
        """
        dge-explain bench --models deit_small --resolutions 224 448 --threads 2
        dge-explain bench --models deit_tiny --gates trained --resolutions 224 --json runs/bench.json
        dge-explain bench --preset maskrcnn --models pvt_small --threads 2
        dge-explain bench --peers --threads 2 --json runs/peers.json""")
    parser.add_argument("--models", nargs="+",
                        help="default: deit_tiny deit_small pvt_small; with --preset: pvt_small pvt_medium "
                             "dpvt_small dpvt_medium; with --peers: deit_tiny deit_small")
    parser.add_argument("--preset", choices=["maskrcnn", "semfpn"],
                        help="the backbones at Table 7's (800x1333) or Table 8's (512x512, 512x683) input sizes")
    parser.add_argument("--resolutions", type=common.positive_int, nargs="+",
                        help=f"square input sides to time (default: {' '.join(map(str, RESOLUTIONS))}; "
                             "with --peers: 224 448)")
    parser.add_argument("--batch-sizes", type=common.positive_int, nargs="+",
                        help="batch sizes to time (default: 1; with --peers: 1 16)")
    parser.add_argument("--peers", action="store_true",
                        help="DGE (forced gates at each of --peer-ratios, and DeiT-Ti's trained gates), ToMe and "
                             "EViT on the same weights: top-1, MACs, latency; --json also writes .md and the figure "
                             "(.png, .pdf) beside it")
    parser.add_argument("--peer-ratios", type=common.open_fraction, nargs="+", default=[0.5, 0.6, 0.75],
                        help="with --peers: the MACs ratios (of the dense model's) every method is set to")
    parser.add_argument("--images", type=common.non_negative_int,
                        help="with --peers: top-1 on the first N images of imagenet-sample's odd half "
                             "(default: all; 0: none)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="the models' and images' precision")
    parser.add_argument("--threads", type=common.positive_int, help="CPU threads (default: torch's)")
    parser.add_argument("--ratio", type=common.open_fraction, default=0.5,
                        help="complexity ratio the forced gates aim at")
    parser.add_argument("--gates", choices=["forced", "trained"], default="forced",
                        help="forced: gates set to reach --ratio; trained: the shipped routers decide")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per case")
    parser.add_argument("--json", help="write the cases here (input of the runtime figure)")
    common.add_home(parser)
    return parser


def run(args) -> int:
    if args.peers:
        return _peers(args)
    if args.preset:
        return _preset(args)
    import torch

    from dge_explain.bench.runtime import HEADER, cases_to_json, environment, run_sweep
    from dge_explain.console import format_table
    from dge_explain.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu" and dtype != torch.float32:
        raise ValueError(f"--dtype {args.dtype}: on the CPU the DGE ops run float32 (and float64) only")
    cases = run_sweep(args.models or ["deit_tiny", "deit_small", "pvt_small"], args.resolutions or RESOLUTIONS,
                      args.batch_sizes or [1], device, args.ratio, args.min_time, dtype, args.gates == "trained",
                      args.home, report=lambda line: print(line, flush=True))
    print(f"\n{environment(device)}")
    print(format_table(HEADER, [case.row() for case in cases]))
    if args.json:
        cases_to_json(cases, device, args.json)
    return 0


def _preset(args) -> int:
    """Tables 7-8 input sizes: multi-scale backbones, dense vs DGE at budget 0.5."""
    if args.gates != "forced" or args.ratio != 0.5 or args.dtype != "float32" or args.batch_sizes not in (None, [1]):
        raise ValueError("--preset times forced gates at budget 0.5, float32, batch 1 (the appendix's setting)")
    import torch

    from dge_explain.bench import presets
    from dge_explain.bench.runtime import environment, write_report
    from dge_explain.console import format_table
    from dge_explain.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = args.models or list(presets.BACKBONES)
    unknown = [n for n in names if n not in presets.BACKBONES]
    if unknown:
        raise ValueError(f"--preset covers {', '.join(presets.BACKBONES)}; not {', '.join(unknown)}")
    rows = []

    def report(case):
        rows.append(presets.row(case))
        print(format_table(presets.HEADER, rows[-1:]).splitlines()[-1], flush=True)

    cases = presets.run_preset(args.preset, names, device, args.min_time, report)
    env = environment(device)
    table = format_table(presets.HEADER, rows)
    print(f"\n{env}\n{table}")
    if args.json:
        write_report(args.json, {"environment": env, "preset": args.preset, "cases": cases},
                     f"# `dge-explain bench --preset {args.preset}`\n\n{env}\n\n{table}\n")
    return 0


def _peers(args) -> int:
    """DGE against ToMe and EViT on the same weights (dge_explain.bench.peers)."""
    if args.preset or args.gates != "forced" or args.dtype != "float32" or args.device != "cpu":
        raise ValueError("--peers times forced and DeiT-Ti's trained gates itself, float32, on the CPU: "
                         "drop --preset, --gates, --dtype and --device")
    from dge_explain.bench import peers

    unknown = [n for n in args.models or [] if n not in peers.MODELS]
    if unknown:
        raise ValueError(f"--peers runs {', '.join(peers.MODELS)}; not {', '.join(unknown)}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = peers.run(args.models or peers.MODELS, args.peer_ratios, args.resolutions or peers.RESOLUTIONS,
                       args.batch_sizes or peers.BATCH_SIZES, args.images, args.min_time, args.home,
                       report=lambda line: print(line, flush=True))
    header, rows = peers.matched(result)
    from dge_explain.console import format_table

    print(f"\n{result['environment']}\n{format_table(header, rows)}")
    if args.json:
        for path in peers.write(result, args.json, "dge-explain " + " ".join(sys.argv[1:])):
            print(f"wrote {path}")
    return 0
