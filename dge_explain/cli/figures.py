"""dge-explain figures: every figure a run folder supports."""
from __future__ import annotations

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "figures", "every figure a run folder supports",
        """
        From an `evaluate` run: the gating maps per layer, the comparison of every method's
        maps with the mask, the precision-recall curves; from a `perturb` run: its curves.
        Each figure as PNG and PDF.""",
        """
        dge-explain figures --run runs/ecssd --out figs/ecssd
        dge-explain figures --run runs/ecssd --out figs/ecssd --images 6 --methods gradcam layer8""")
    parser.add_argument("--run", required=True, help="output folder of `dge-explain evaluate` or `perturb`")
    parser.add_argument("--out", required=True, help="folder the figures are written to")
    parser.add_argument("--images", type=common.positive_int, default=4, help="images per map figure")
    parser.add_argument("--dpi", type=common.positive_int, default=150, help="resolution of the PNGs")
    parser.add_argument("--methods", nargs="+",
                        help="maps of the comparison figure (default: every map of the run but random)")
    common.add_home(parser)
    return parser


def run(args) -> int:
    from dge_explain.viz.figures import figures_for_run

    for path in figures_for_run(args.run, args.out, images=args.images, home=args.home, dpi=args.dpi,
                                methods=args.methods):
        print(path)
    return 0
