"""Figure: the gating map of every layer beside the image and its mask."""
import sys

from _common import map_parser, model_and_dataset

from dge_explain.explainers import GatingMaps
from dge_explain.viz.figures import collect_maps, map_grid, save


def main(argv=None):
    args = map_parser(__doc__, "figs/gating_layers", None).parse_args(argv)
    model, dataset = model_and_dataset(args)
    layers = [int(v) for v in args.layers.split(",")] if args.layers else "all"
    images, masks, maps = collect_maps(dataset, [GatingMaps(model, layers)], args.images)
    for path in save(map_grid(images, masks, maps), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
