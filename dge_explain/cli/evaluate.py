"""dge-explain evaluate: maps scored as soft segmentations (Tables 5 and 6)."""
from __future__ import annotations

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "evaluate", "score maps as soft segmentations against masks (Tables 5 and 6)",
        """
        Every method's maps on image/mask pairs, scored with the ImageNet-segmentation protocol
        of Chefer et al. (pixel accuracy, mAP, mIoU). Writes results.json/.csv/.md,
        per_image.csv and one record per image; rerunning with the same --out resumes.""",
        """
        dge-explain evaluate --dataset 'ecssd:$DGE_EXPLAIN_HOME/data/ecssd' --methods random gradcam gating:8 --out runs/ecssd
        dge-explain evaluate --dataset masks:photos,masks --methods gating-margin:8 relevance --limit 50 --out runs/mine""")
    common.add_model_arguments(parser)
    parser.add_argument("--dataset", required=True,
                        help="ecssd:FOLDER (FOLDER/images + FOLDER/masks), masks:IMAGES,MASKS or "
                             "imagenet-seg:FILE.mat")
    common.method_arguments(parser, ["random", "gradcam", "gating"])
    common.add_run_arguments(parser, 16, "output folder (rerun to resume)")
    common.add_preprocessing_arguments(parser, crop=False)
    common.add_reading_arguments(parser, masks=True)
    return parser


def run(args) -> int:
    from dge_explain import paths
    from dge_explain.data.listing import check_dataset

    dataset = paths.expand(args.dataset, args.home)
    check_dataset(dataset)
    model, explainers, device = common.model_and_explainers(args, "evaluate")

    from dge_explain.data import Preprocessing
    from dge_explain.evaluation.report import markdown_table
    from dge_explain.evaluation.segmentation import evaluate

    preprocessing = Preprocessing.of(model, input_size=args.image_size, mean=args.mean, std=args.std,
                                     **common.reading(args)).for_segmentation(args.interpolation)
    result = evaluate(model, dataset, explainers, args.out, limit=args.limit, batch_size=args.batch_size,
                      device=device, workers=args.workers, info=common.model_identity(args),
                      preprocessing=preprocessing)
    if result is not None:
        from dge_explain.data.folders import printable

        print(f"{result.images} images, {printable(args.dataset)}")
        print(markdown_table(result))
        print(f"written to {args.out}/results.{{json,csv,md}} and per_image.csv")
    return 0
