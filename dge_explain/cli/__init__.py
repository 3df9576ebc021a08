"""The ``dge-explain`` command line: one module per subcommand (its parser and its
``run``), the options they share in ``common``.

Parsing imports neither torch, timm nor grad-cam (they load inside ``run``), so
``--help`` answers at once and every check that needs no model (arguments, files,
the run folder) fails in well under a second, before the model loads.
"""
from __future__ import annotations

import argparse
import sys

from . import bench, classify, common, evaluate, explain, figures, info, methods, perturb, train

COMMANDS = (explain, evaluate, perturb, classify, train, bench, figures, methods, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dge-explain", formatter_class=common.HelpFormatter,
        description="Run, explain and benchmark Dynamic Grained Encoder (DGE) vision transformers.",
        epilog="examples:\n  dge-explain explain photos/*.jpg --out runs/maps\n"
               "  dge-explain evaluate --dataset 'ecssd:$DGE_EXPLAIN_HOME/data/ecssd' --out runs/ecssd\n"
               "  dge-explain COMMAND --help")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(handler=command.run)
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
