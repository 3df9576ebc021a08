"""dge-explain classify: accuracy, complexity and fine regions on labelled images."""
from __future__ import annotations

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "classify", "top-1/top-5, complexity ratio and fine regions per layer on labelled images",
        """
        Top-1/top-5 on synset-named images (class = position of the synset in sorted order),
        the DGE model's complexity ratio (its MACs over the dense model's) and the share of
        fine regions per layer; a shipped model's dense teacher beside it.""",
        """
        dge-explain classify
        dge-explain classify --images '$DGE_EXPLAIN_HOME/data/imagenet-sample:even' --out runs/classify.json""")
    common.add_model_arguments(parser)
    parser.add_argument("--images", default="$DGE_EXPLAIN_HOME/data/imagenet-sample:odd",
                        help="folder of synset-named images; FOLDER:even / FOLDER:odd for a half")
    parser.add_argument("--batch-size", type=common.positive_int, default=50, help="images per batch")
    parser.add_argument("--workers", type=common.non_negative_int, default=2, help="data-loading worker processes")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense teacher")
    parser.add_argument("--out", help="also write the result as JSON here")
    common.add_preprocessing_arguments(parser, crop=True)
    common.add_reading_arguments(parser, masks=False)
    common.add_home(parser)
    return parser


def run(args) -> int:
    import json

    from dge_explain import paths, zoo
    from dge_explain.data.folders import list_images

    folder = paths.expand(args.images, args.home)
    list_images(folder)
    common.check_model(args)

    from dge_explain.data import Preprocessing
    from dge_explain.distributed import Distributed
    from dge_explain.evaluation.classification import evaluate_classification

    device = Distributed(args.device).device
    model = common.load_model(args)
    dense = None
    if zoo.shipped_name(args.model) and not args.no_dense:
        from dge_explain.zoo.build import dense_teacher

        dense = dense_teacher(args.model, args.weights, args.home)
    preprocessing = Preprocessing.of(model, input_size=args.image_size, interpolation=args.interpolation,
                                     mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                                     **common.reading(args))
    result = evaluate_classification(model, folder, dense, batch_size=args.batch_size, device=device,
                                     workers=args.workers, preprocessing=preprocessing)
    print(json.dumps(result.to_dict(), indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({**common.model_identity(args), "image_folder": folder, **result.to_dict()}, handle, indent=2)
    return 0
