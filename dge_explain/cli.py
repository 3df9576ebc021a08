"""The ``dge-explain`` command line."""
from __future__ import annotations

import argparse
import sys

from dge_explain.methods import method_help
from dge_explain.console import format_table
from dge_explain.training.config import TrainConfig

# The parser imports nothing heavy (torch, timm, grad-cam load in the commands),
# so that `dge-explain --help` answers at once.
TrainDefaults = TrainConfig(out="")


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from dge_explain import ops
    from dge_explain.ops.selfcheck import check_all

    info = ops.build_info()
    print(format_table(["build", "value"], [[key, str(value)] for key, value in info.items()]))
    targets = [("cpu", torch.float32), ("cpu", torch.float64)]
    if info["compiled_cuda"] and torch.cuda.is_available():
        targets += [("cuda", dtype) for dtype in
                    (torch.float32, torch.float16, torch.bfloat16, torch.float64)]
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


def _model_choice(args) -> dict:
    return dict(name=args.model, checkpoint=args.checkpoint, home=args.home, weights=args.weights,
                trained=args.trained, random_weights=args.random_weights)


def _overrides(args) -> dict:
    """The preprocessing the user set on the command line (None = the model's)."""
    return {key: getattr(args, key, None) for key in ("mean", "std", "crop_pct")}


def cmd_figures(args: argparse.Namespace) -> int:
    from dge_explain.viz.figures import figures_for_run

    for path in figures_for_run(args.run, args.out, images=args.images, home=args.home, dpi=args.dpi,
                                methods=args.methods):
        print(path)
    return 0


def _explainers_and_model(args: argparse.Namespace, command: str, check_data):
    """(model, explainers, device) of an evaluate or perturb command, after every check
    that needs neither torch, timm nor the model (method names, data, run folder)."""
    from dge_explain.methods import parse_method
    from dge_explain.evaluation.runs import RunFolder

    for method in args.methods:
        parse_method(method)
    check_data()
    RunFolder(args.out, command).previous_settings()

    from dge_explain import zoo
    from dge_explain.distributed import Distributed
    from dge_explain.explainers import build_explainers

    zoo.check_choice(args.model, args.checkpoint, args.weights, args.trained, args.random_weights)
    device = Distributed(args.device).device
    model = zoo.load_by_name(**_model_choice(args))
    return model, build_explainers(model, args.methods, args.seed), device


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dge_explain import paths
    from dge_explain.data.listing import check_dataset

    dataset = paths.expand(args.dataset, args.home)
    model, explainers, device = _explainers_and_model(args, "evaluate", lambda: check_dataset(dataset))

    from dge_explain import zoo
    from dge_explain.data import Preprocessing
    from dge_explain.evaluation.report import markdown_table
    from dge_explain.evaluation.segmentation import evaluate

    preprocessing = Preprocessing.of(model, input_size=args.image_size, mean=args.mean, std=args.std
                                     ).for_segmentation(args.interpolation)
    result = evaluate(model, dataset, explainers, args.out, limit=args.limit, batch_size=args.batch_size,
                      device=device, workers=args.workers, info=zoo.identity(**_model_choice(args)),
                      preprocessing=preprocessing)
    if result is not None:
        print(f"{result.images} images, {args.dataset}")
        print(markdown_table(result))
        print(f"written to {args.out}/results.{{json,csv,md}} and per_image.csv")
    return 0


def cmd_perturb(args: argparse.Namespace) -> int:
    from dge_explain import paths
    from dge_explain.data.folders import list_images

    folder = paths.expand(args.images, args.home)
    model, explainers, device = _explainers_and_model(args, "perturb", lambda: list_images(folder))

    from dge_explain import zoo
    from dge_explain.data import Preprocessing
    from dge_explain.evaluation.perturbation import markdown_tables, perturb

    preprocessing = Preprocessing.of(model, input_size=args.image_size, interpolation=args.interpolation,
                                     **_overrides(args))
    summary = perturb(model, folder, explainers, args.out, limit=args.limit, batch_size=args.batch_size,
                      forward_batch=args.forward_batch, device=device, workers=args.workers,
                      info=zoo.identity(**_model_choice(args)), preprocessing=preprocessing,
                      budget=None if args.no_router else args.budget)
    if summary is not None:
        print(markdown_tables(summary))
        print(f"written to {args.out}/results.{{json,csv,md}} and perturbation.png")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    import json

    from dge_explain import paths
    from dge_explain.data.folders import list_images

    folder = paths.expand(args.images, args.home)
    list_images(folder)  # before the heavy imports and the model

    from dge_explain import zoo
    from dge_explain.evaluation.classification import evaluate_classification
    from dge_explain.data import Preprocessing

    zoo.check_choice(args.model, args.checkpoint, args.weights, args.trained, args.random_weights)
    model = zoo.load_by_name(**_model_choice(args))
    dense = None
    if args.model in zoo.MODELS and not args.no_dense:
        dense = zoo.dense_teacher(args.model, args.weights, args.home)
    preprocessing = Preprocessing.of(model, input_size=args.image_size, interpolation=args.interpolation,
                                     **_overrides(args))
    result = evaluate_classification(model, folder, dense, batch_size=args.batch_size,
                                     device=args.device, workers=args.workers, preprocessing=preprocessing)
    print(json.dumps(result.to_dict(), indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({**zoo.identity(**_model_choice(args)), "image_folder": folder, **result.to_dict()}, handle,
                      indent=2)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dge_explain import paths
    from dge_explain.training.distill import train

    config = TrainConfig(
        out=args.out, weights=args.weights, dense_model=args.dense_model, phi=tuple(args.phi),
        images=tuple(paths.expand(i, args.home) for i in args.images), image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, gamma=args.gamma,
        budget_weight=args.budget_weight, temperature=args.temperature, train=tuple(args.train),
        flip=not args.no_flip, seed=args.seed, checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps, device=args.device, amp=args.amp, home=args.home,
        interpolation=args.interpolation, **_overrides(args))
    result = train(config, resume=args.resume)
    print(f"{result.steps} steps; last: {result.last}; trained parameters in {result.out}/trained.safetensors")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from dge_explain.bench.runtime import HEADER, cases_to_json, environment, run_sweep

    if args.preset:
        return _bench_preset(args)
    if args.gates == "forced" and not 0 < args.ratio < 1:
        raise SystemExit(f"--ratio must be in (0, 1), got {args.ratio}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu" and dtype != torch.float32:
        raise SystemExit(f"--dtype {args.dtype}: on the CPU the DGE ops run float32 (and float64) only")
    cases = run_sweep(args.models or ["deit_tiny", "deit_small", "pvt_small"], args.resolutions,
                      args.batch_sizes, device, args.ratio, args.min_time, dtype, args.gates == "trained",
                      args.home, report=lambda line: print(line, flush=True))
    print(f"\n{environment(device)}")
    print(format_table(HEADER, [case.row() for case in cases]))
    if args.json:
        cases_to_json(cases, device, args.json)
    return 0


def _bench_preset(args: argparse.Namespace) -> int:
    """Tables 7-8 input sizes: multi-scale backbones, dense vs DGE at budget 0.5."""
    import torch

    from dge_explain.bench import presets
    from dge_explain.bench.runtime import environment, write_report

    if args.gates != "forced" or args.ratio != 0.5 or args.dtype != "float32" or args.batch_sizes != [1]:
        raise SystemExit("--preset times forced gates at budget 0.5, float32, batch 1 (the appendix's setting)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.models or list(presets.BACKBONES)
    unknown = [n for n in names if n not in presets.BACKBONES]
    if unknown:
        raise SystemExit(f"--preset covers {', '.join(presets.BACKBONES)}; not {', '.join(unknown)}")
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


def _open_fraction(text: str) -> float:
    """argparse type of a share strictly between 0 and 1 (refused before any model loads)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="deit_tiny_dge_s12",
                        help="shipped model name (deit_tiny_dge_s12) or a timm model name")
    parser.add_argument("--checkpoint", help="checkpoint for a timm model name")
    parser.add_argument("--weights", help="dense teacher weights of a shipped model "
                                          "(default $DGE_EXPLAIN_HOME/weights/...; 'timm' downloads)")
    parser.add_argument("--trained", help="trained.safetensors of a `dge-explain train` run, "
                                          "instead of the shipped parameters")
    parser.add_argument("--random-weights", action="store_true",
                        help="run a timm model name without --checkpoint (random weights) on purpose")


def _preprocessing_arguments(parser: argparse.ArgumentParser, crop: bool) -> None:
    """Overrides of the model's timm data config (default: the model's own)."""
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation mean (default: the model's data config)")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="normalisation std (default: the model's data config)")
    interpolations = ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
    if crop:
        parser.add_argument("--interpolation", choices=interpolations,
                            help="resize filter (default: the model's data config)")
        parser.add_argument("--crop-pct", type=float,
                            help="centre-crop fraction: the short side is resized to size / crop_pct "
                                 "(default: the model's data config)")
    else:
        parser.add_argument("--interpolation", choices=interpolations,
                            help="resize filter of the whole image (default: bilinear, as the protocol)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dge-explain", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="build report and a self-check of every op")
    info.add_argument("--seed", type=int, default=None,
                      help="seed of the random inputs (default: fresh each run)")
    info.set_defaults(handler=cmd_info)

    evaluate = commands.add_parser("evaluate", help="score gating maps, GradCAM and random maps as "
                                                     "soft segmentations (Tables 5 and 6)")
    _model_arguments(evaluate)
    evaluate.add_argument("--dataset", required=True,
                          help="ecssd:FOLDER, masks:IMAGES,MASKS or imagenet-seg:FILE.mat")
    evaluate.add_argument("--methods", nargs="+", default=["random", "gradcam", "gating"],
                          help=method_help())
    evaluate.add_argument("--out", required=True, help="output folder (rerun to resume)")
    evaluate.add_argument("--limit", type=int, help="first N images only")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--image-size", type=int,
                          help="side the image and mask are resized to (default: the model's input size)")
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    _preprocessing_arguments(evaluate, crop=False)
    evaluate.set_defaults(handler=cmd_evaluate)

    perturb = commands.add_parser("perturb", help="faithfulness: the perturbation test of every explainer "
                                                   "(and, for DGE models, the router test)")
    _model_arguments(perturb)
    perturb.add_argument("--images", default="$DGE_EXPLAIN_HOME/data/imagenet-sample",
                         help="folder of synset-named images; FOLDER:even / FOLDER:odd for a half")
    perturb.add_argument("--methods", nargs="+", default=["random", "attention", "rollout", "gating:1,4,8,12"],
                         help=method_help())
    perturb.add_argument("--out", required=True, help="output folder (rerun to resume)")
    perturb.add_argument("--limit", type=int, help="first N images only")
    perturb.add_argument("--batch-size", type=int, default=16, help="images whose maps are computed together")
    perturb.add_argument("--forward-batch", type=int, default=64, help="perturbed images per forward pass")
    perturb.add_argument("--budget", type=_open_fraction, default=0.5,
                         help="router test: share of regions forced to the finest granularity")
    perturb.add_argument("--no-router", action="store_true", help="skip the router test")
    perturb.add_argument("--image-size", type=int, help="crop size (default: the model's input size)")
    perturb.add_argument("--workers", type=int, default=2)
    perturb.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    _preprocessing_arguments(perturb, crop=True)
    perturb.set_defaults(handler=cmd_perturb)

    classify = commands.add_parser("classify", help="top-1/top-5, complexity ratio and fine regions "
                                                     "per layer on labelled images")
    _model_arguments(classify)
    classify.add_argument("--images", default="$DGE_EXPLAIN_HOME/data/imagenet-sample:odd",
                          help="folder of synset-named images; FOLDER:even / FOLDER:odd for a half")
    classify.add_argument("--batch-size", type=int, default=50)
    classify.add_argument("--workers", type=int, default=2)
    classify.add_argument("--no-dense", action="store_true", help="skip the dense teacher")
    classify.add_argument("--out", help="also write the result as JSON here")
    classify.add_argument("--image-size", type=int, help="crop size (default: the model's input size)")
    _preprocessing_arguments(classify, crop=True)
    classify.set_defaults(handler=cmd_classify)

    train = commands.add_parser("train", help="distil DGE routers from a dense teacher")
    train.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl, trained.safetensors)")
    train.add_argument("--weights", help="dense checkpoint (default $DGE_EXPLAIN_HOME/weights/"
                                         "deit_tiny_patch16_224.safetensors)")
    train.add_argument("--dense-model", default=TrainDefaults.dense_model)
    train.add_argument("--phi", type=int, nargs="+", default=list(TrainDefaults.phi))
    train.add_argument("--images", nargs="*", default=[],
                       help="image folders (FOLDER, FOLDER:even, FOLDER:odd); default ECSSD images "
                            "and imagenet-sample:even")
    train.add_argument("--image-size", type=int, default=TrainDefaults.image_size)
    train.add_argument("--epochs", type=int, default=TrainDefaults.epochs)
    train.add_argument("--batch-size", type=int, default=TrainDefaults.batch_size)
    train.add_argument("--lr", type=float, default=TrainDefaults.lr, help="learning rate of the routers")
    train.add_argument("--backbone-lr", type=float, default=TrainDefaults.backbone_lr,
                       help="learning rate of any other trained group")
    train.add_argument("--schedule", choices=["cosine", "constant"], default=TrainDefaults.schedule)
    train.add_argument("--warmup-steps", type=int, default=TrainDefaults.warmup_steps)
    train.add_argument("--weight-decay", type=float, default=TrainDefaults.weight_decay)
    train.add_argument("--gamma", type=float, default=TrainDefaults.gamma, help="MAC budget")
    train.add_argument("--budget-weight", type=float, default=TrainDefaults.budget_weight,
                       help="lambda of the budget loss")
    train.add_argument("--temperature", type=float, default=TrainDefaults.temperature)
    train.add_argument("--train", nargs="+", default=list(TrainDefaults.train),
                       help="parameter groups to train: routers, norms, biases, head, mlp, attn, "
                            "or regular expressions over parameter names")
    train.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    train.add_argument("--seed", type=int, default=TrainDefaults.seed)
    train.add_argument("--checkpoint-every", type=int, default=TrainDefaults.checkpoint_every)
    train.add_argument("--max-steps", type=int, help="stop early (smoke runs)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    _preprocessing_arguments(train, crop=True)
    train.set_defaults(handler=cmd_train)

    bench = commands.add_parser("bench", help="latency of dense vs DGE models over resolutions "
                                               "(Fig. 6, Tables 7-8)")
    bench.add_argument("--models", nargs="+", default=None,
                       help="default deit_tiny deit_small pvt_small; with --preset: pvt_small pvt_medium dpvt_small "
                            "dpvt_medium")
    bench.add_argument("--preset", choices=["maskrcnn", "semfpn"],
                       help="the backbones at Table 7's (800x1333) or Table 8's (512x512, 512x683) input sizes")
    bench.add_argument("--resolutions", type=int, nargs="+", default=[224, 256, 384, 448, 512, 768, 1024])
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="the models' and images' precision")
    bench.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    bench.add_argument("--ratio", type=float, default=0.5, help="complexity ratio the forced gates aim at")
    bench.add_argument("--gates", choices=["forced", "trained"], default="forced")
    bench.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per case")
    bench.add_argument("--json", help="write the cases here (input of the runtime figure)")
    bench.set_defaults(handler=cmd_bench)

    figures = commands.add_parser("figures", help="every figure an evaluation run supports")
    figures.add_argument("--run", required=True, help="output folder of `dge-explain evaluate`")
    figures.add_argument("--out", required=True)
    figures.add_argument("--images", type=int, default=4, help="images per map figure")
    figures.add_argument("--dpi", type=int, default=150, help="resolution of the PNGs")
    figures.add_argument("--methods", nargs="+",
                         help="methods of the comparison figure (default: every method of the run but random)")
    figures.set_defaults(handler=cmd_figures)

    for sub in (info, evaluate, perturb, classify, train, bench, figures):
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the full traceback of an error")
    for sub in (evaluate, perturb, classify, train, bench, figures):
        sub.add_argument("--home", help="data home (default $DGE_EXPLAIN_HOME)")
    for sub in (evaluate, perturb, classify):
        sub.add_argument("--device", default="cpu")
    return parser


# What a user's input can cause (a bad path, an unreadable file, a wrong argument, a
# run folder in use): reported in one line.  Anything else is a bug: traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.handler(args)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"dge-explain {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
