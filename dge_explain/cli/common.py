"""What the subcommands share: the help layout, argument types that refuse bad
values while parsing, the model / preprocessing / run-folder options, and the
checks that run before torch and the model load (a wrong argument, a missing
file, a run folder in use: one line, at once)."""
from __future__ import annotations

import argparse
import textwrap

from dge_explain.zoo import DEFAULT_MODEL, MODELS

INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; every option's default shown."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def subcommand(commands, name: str, summary: str, description: str, examples: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, formatter_class=HelpFormatter,
                                 description=textwrap.dedent(description).strip(),
                                 epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "))
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of its one-line message")
    return parser


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, "0 or more")


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="data home with the shared weights and datasets "
                                       "(default: $DGE_EXPLAIN_HOME)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"a shipped model ({', '.join(MODELS)}, or an alias), any timm model name "
                            "(with --checkpoint), or a checkpoint file that names its model")
    group.add_argument("--checkpoint", help="checkpoint for a timm model name (safetensors or torch file; "
                                            "timm, original DGE or DDP layout)")
    group.add_argument("--weights", help="dense teacher weights of a shipped model (default: "
                                         "$DGE_EXPLAIN_HOME/weights/...; 'timm' downloads them)")
    group.add_argument("--trained", help="trained.safetensors of a `dge-explain train` run, instead of the "
                                         "shipped router parameters")
    group.add_argument("--random-weights", action="store_true",
                       help="run a timm model name without --checkpoint (random weights), on purpose")
    group.add_argument("--fresh-routers", action="store_true",
                       help="a dense checkpoint into a DGE model: the routers keep their initialisation "
                            "(untrained: for `dge-explain train`, not for reading maps)")
    group.add_argument("--partial", action="store_true",
                       help="load the checkpoint keys that match and report the others, instead of failing")


def model_choice(args) -> dict:
    """The keyword arguments of dge_explain.load_model (and zoo.identity)."""
    return dict(checkpoint=args.checkpoint, home=args.home, weights=args.weights, trained=args.trained,
                random_weights=args.random_weights, fresh_routers=args.fresh_routers, partial=args.partial)


def check_model(args) -> None:
    """The model arguments and the files they name, before torch loads."""
    from dge_explain import zoo

    zoo.check_choice(args.model, **model_choice(args))


def load_model(args, device="cpu"):
    from dge_explain.api import load_model

    return load_model(args.model, device=device, **model_choice(args))


def model_identity(args) -> dict:
    from dge_explain import zoo

    return zoo.identity(args.model, **model_choice(args))


def mask_threshold(text: str) -> int:
    value = _integer(text, 1, "a grey level from 1 to 255")
    if value > 255:
        raise argparse.ArgumentTypeError(f"must be a grey level from 1 to 255, got {value}")
    return value


def add_reading_arguments(parser: argparse.ArgumentParser, masks: bool) -> None:
    """How image (and mask) files are read (docs/your-data.md)."""
    group = parser.add_argument_group("reading files (docs/your-data.md)")
    group.add_argument("--no-exif", action="store_true",
                       help="read images and masks as stored, ignoring their EXIF orientation tag (default: "
                            "applied, as OpenCV's imread and PIL.ImageOps.exif_transpose do)")
    group.add_argument("--max-image-pixels", type=positive_int,
                       help="decompression-bomb limit: an image above N pixels is read with a warning, one above "
                            "2N is refused (default: Pillow's, 89478485)")
    if masks:
        group.add_argument("--mask-threshold", type=mask_threshold, default=128,
                           help="a mask with more than two grey levels (e.g. JPEG) is foreground where level >= T "
                                "(mid-grey); two-level masks are binary whatever their levels")


def reading(args) -> dict:
    """The reading settings of the command line, as Preprocessing.of overrides."""
    return {"exif": False if args.no_exif else None, "max_image_pixels": args.max_image_pixels,
            "mask_threshold": getattr(args, "mask_threshold", None)}


def add_preprocessing_arguments(parser: argparse.ArgumentParser, crop: bool, size: bool = True) -> None:
    """Overrides of the model's timm data config (default: the model's own)."""
    group = parser.add_argument_group("preprocessing (default: the model's own timm data config)")
    if size:
        group.add_argument("--image-size", type=positive_int,
                           help="side the images are resized (and cropped) to (default: the model's input size)")
    group.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean")
    group.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std")
    if crop:
        group.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter")
        group.add_argument("--crop-pct", type=float,
                           help="centre-crop fraction: the short side is resized to size / crop_pct")
    else:
        group.add_argument("--interpolation", choices=INTERPOLATIONS,
                           help="resize filter of the whole image (default: bilinear, as the protocol)")


def add_run_arguments(parser: argparse.ArgumentParser, batch_size: int, out_help: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--out", required=True, help=out_help)
    group.add_argument("--limit", type=positive_int, help="the first N images only")
    group.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per batch")
    group.add_argument("--workers", type=non_negative_int, default=2, help="data-loading worker processes")
    group.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    group.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    add_home(parser)


def check_run_folder(args, command: str) -> None:
    """The run folder can be used as asked (a folder, writable or finished, not in
    use, same format, no smaller --limit), before torch and the model load."""
    import os

    from dge_explain.evaluation.runs import RunFolder

    # under torchrun, rank 0 takes the folder's lock while the other ranks start up
    RunFolder(args.out, command).check_usable(args.limit, in_use=os.environ.get("RANK", "0") == "0")


def check_methods(methods) -> None:
    from dge_explain.methods import parse_method

    for method in methods:
        parse_method(method)


def method_arguments(parser: argparse.ArgumentParser, default: list[str]) -> None:
    from dge_explain.methods import method_help

    parser.add_argument("--methods", nargs="+", default=default, metavar="METHOD",
                        help=f"maps to compute: {method_help()} (see `dge-explain methods`)")


def model_and_explainers(args, command: str):
    """(model, explainers, device) of a command that computes maps, after every check
    that needs no model (methods, run folder, model files; the caller has checked its
    images), so that a mistake costs neither torch's import nor the model's load."""
    check_methods(args.methods)
    check_run_folder(args, command)
    check_model(args)

    from dge_explain.distributed import Distributed
    from dge_explain.explainers import build_explainers

    device = Distributed(args.device).device
    model = load_model(args)
    return model, build_explainers(model, args.methods, args.seed), device
