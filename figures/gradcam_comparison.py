"""Figure: image | mask | GradCAM | gating layers, with each map's mIoU on that image."""
import sys

from _common import parser

from dge_explain import paths
from dge_explain.cli import load_model_by_name
from dge_explain.data import segmentation_dataset
from dge_explain.evaluate import build_explainers
from dge_explain.figures import collect_maps, map_grid, save
from dge_explain.metrics import aggregate, score_image


def main(argv=None):
    p = parser(__doc__, "figs/gradcam_comparison")
    p.add_argument("--model", default="deit_tiny_dge_s12")
    p.add_argument("--dataset", help="default ecssd:$DGE_EXPLAIN_HOME/data/ecssd")
    p.add_argument("--layers", default="1,4,8,12")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3], help="dataset indices")
    args = p.parse_args(argv)
    model = load_model_by_name(args.model, home=args.home)
    data = segmentation_dataset(args.dataset or f"ecssd:{paths.home(args.home) / 'data' / 'ecssd'}")
    explainers = build_explainers(model, ["gradcam", f"gating:{args.layers}"])
    images, masks, maps = collect_maps(model, data, explainers, args.images)
    notes = [{name: f"mIoU {aggregate([score_image(maps[name][row], masks[row])]).miou * 100:.0f}"
              for name in maps} for row in range(len(images))]
    for path in save(map_grid(images, masks, maps, notes), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
