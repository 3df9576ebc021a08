"""dge-explain explain: maps of any images, no masks needed."""
from __future__ import annotations

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "explain", "maps of any images (files, folders, globs): overlays, a grid, raw maps",
        """
        Every method's maps of your images with the model's own preprocessing, written per image:
        one overlay per method at the photo's own size and aspect ratio (the map carried back
        through the resize, and crop, the preprocessing applied; its value range printed on it,
        flat maps marked), a grid of all methods, and the raw maps (maps.npz), with index.json and
        index.md listing every map's range. Rerunning with the same --out resumes.""",
        """
        dge-explain explain photos/ --out runs/maps
        dge-explain explain 'photos/*.jpg' cat.png --methods gating:8 gating-margin:8 gradcam relevance --out runs/maps
        dge-explain explain photos/ --crop --limit 10 --out runs/maps-crop""")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, folders (every image in them) or quoted glob patterns")
    common.add_model_arguments(parser)
    common.method_arguments(parser, ["gating:8", "gating-margin:8", "gradcam"])
    common.add_run_arguments(parser, 8, "output folder (rerun to resume)")
    parser.add_argument("--crop", action="store_true",
                        help="the classification view (resize the short side, centre crop) instead of the whole "
                             "image resized to the input size; pixels outside the crop get no value")
    parser.add_argument("--dpi", type=common.positive_int, default=100, help="resolution of the grid PNGs")
    common.add_preprocessing_arguments(parser, crop=True)
    common.add_reading_arguments(parser, masks=False)
    return parser


def run(args) -> int:
    from dge_explain import paths
    from dge_explain.data.images import image_paths

    files = image_paths([paths.expand(a, args.home) for a in args.images])
    model, explainers, device = common.model_and_explainers(args, "explain")

    from dge_explain.data import Preprocessing
    from dge_explain.explain_images import explain_images

    preprocessing = Preprocessing.of(model, input_size=args.image_size, mean=args.mean, std=args.std,
                                     interpolation=args.interpolation, crop_pct=args.crop_pct,
                                     **common.reading(args))
    if not args.crop:
        preprocessing = preprocessing.for_segmentation(args.interpolation)
    explain_images(model, files, explainers, args.out, preprocessing, limit=args.limit,
                   batch_size=args.batch_size, device=device, workers=args.workers,
                   info=common.model_identity(args), dpi=args.dpi)
    return 0
