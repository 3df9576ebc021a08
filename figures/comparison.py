"""Figure: image | mask | the maps of any list of methods, with each map's mIoU on that image."""
import sys

from _common import map_parser, model_and_dataset

from dge_explain.explainers import build_explainers
from dge_explain.viz.figures import collect_maps, map_grid, save
from dge_explain.evaluation.metrics import aggregate, score_image


def main(argv=None):
    parser = map_parser(__doc__, "figs/comparison", "1,4,8,12")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gating"],
                        help="method names as for `dge-explain evaluate` (gating takes --layers)")
    args = parser.parse_args(argv)
    model, dataset = model_and_dataset(args)
    methods = [f"gating:{args.layers}" if m == "gating" and args.layers else m for m in args.methods]
    images, masks, maps = collect_maps(dataset, build_explainers(model, methods), args.images)
    notes = [{name: f"mIoU {aggregate([score_image(maps[name][row], masks[row])]).miou * 100:.0f}"
              for name in maps} for row in range(len(images))]
    for path in save(map_grid(images, masks, maps, notes), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
