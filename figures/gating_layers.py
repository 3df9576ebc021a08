"""Figure: the gating map of every layer beside the image and its mask."""
import sys

from _common import parser

from dge_explain import paths
from dge_explain.cli import load_model_by_name
from dge_explain.data import segmentation_dataset
from dge_explain.explain import GatingMaps
from dge_explain.figures import collect_maps, map_grid, save


def main(argv=None):
    p = parser(__doc__, "figs/gating_layers")
    p.add_argument("--model", default="deit_tiny_dge_s12")
    p.add_argument("--dataset", help="default ecssd:$DGE_EXPLAIN_HOME/data/ecssd")
    p.add_argument("--layers", help="comma-separated (default: every layer)")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3], help="dataset indices")
    args = p.parse_args(argv)
    model = load_model_by_name(args.model, home=args.home)
    data = segmentation_dataset(args.dataset or f"ecssd:{paths.home(args.home) / 'data' / 'ecssd'}")
    layers = [int(v) for v in args.layers.split(",")] if args.layers else None
    images, masks, maps = collect_maps(model, data, [GatingMaps(model, layers)], args.images)
    for path in save(map_grid(images, masks, maps), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
