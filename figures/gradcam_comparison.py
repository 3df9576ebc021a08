"""Figure: image | mask | GradCAM | gating layers, with each map's mIoU on that image."""
import sys

from _common import map_parser, model_and_dataset

from dge_explain.evaluate import build_explainers
from dge_explain.figures import collect_maps, map_grid, save
from dge_explain.metrics import aggregate, score_image


def main(argv=None):
    args = map_parser(__doc__, "figs/gradcam_comparison", "1,4,8,12").parse_args(argv)
    model, dataset = model_and_dataset(args)
    explainers = build_explainers(model, ["gradcam", f"gating:{args.layers}"])
    images, masks, maps = collect_maps(dataset, explainers, args.images)
    notes = [{name: f"mIoU {aggregate([score_image(maps[name][row], masks[row])]).miou * 100:.0f}"
              for name in maps} for row in range(len(images))]
    for path in save(map_grid(images, masks, maps, notes), args.out, args.dpi):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
