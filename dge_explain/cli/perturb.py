"""dge-explain perturb: faithfulness by perturbation, and the router test."""
from __future__ import annotations

from pathlib import Path

from . import common


def add_parser(commands):
    parser = common.subcommand(
        commands, "perturb", "faithfulness: the perturbation test of every explainer (and the router test)",
        """
        The positive and negative perturbation test (Chefer et al.): the most (or least)
        relevant pixels of each map removed step by step, the accuracy on labelled images
        integrated over the steps (AUC); for DGE models also the router test (the map's top
        regions forced to the finest granularity at --budget). Resumable like evaluate.""",
        """
        dge-explain perturb --methods random attention rollout gating:4,8 --limit 100 --out runs/perturb
        dge-explain perturb --images 'photos:odd' --methods relevance gating:8 --no-router --out runs/perturb-odd""")
    common.add_model_arguments(parser)
    parser.add_argument("--images", default="$DGE_EXPLAIN_HOME/data/imagenet-sample",
                        help="folder of synset-named images; FOLDER:even / FOLDER:odd for a half")
    common.method_arguments(parser, ["random", "attention", "rollout", "gating:1,4,8,12"])
    common.add_run_arguments(parser, 16, "output folder (rerun to resume)")
    parser.add_argument("--forward-batch", type=common.positive_int, default=64,
                        help="perturbed images per forward pass")
    parser.add_argument("--budget", type=common.open_fraction, default=0.5,
                        help="router test: share of regions forced to the finest granularity")
    parser.add_argument("--no-router", action="store_true", help="skip the router test")
    common.add_preprocessing_arguments(parser, crop=True)
    common.add_reading_arguments(parser, masks=False)
    return parser


def run(args) -> int:
    from dge_explain import paths
    from dge_explain.data.folders import list_images

    folder = paths.expand(args.images, args.home)
    list_images(folder)
    model, explainers, device = common.model_and_explainers(args, "perturb")

    from dge_explain.data import Preprocessing
    from dge_explain.evaluation.perturbation import markdown_tables, perturb

    preprocessing = Preprocessing.of(model, input_size=args.image_size, interpolation=args.interpolation,
                                     mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                                     **common.reading(args))
    summary = perturb(model, folder, explainers, args.out, limit=args.limit, batch_size=args.batch_size,
                      forward_batch=args.forward_batch, device=device, workers=args.workers,
                      info=common.model_identity(args), preprocessing=preprocessing,
                      budget=None if args.no_router else args.budget)
    if summary is not None:
        from dge_explain.viz.figures import perturbation_figure, save

        save(perturbation_figure(summary), Path(args.out) / "perturbation", dpi=100)
        print(markdown_tables(summary))
        print(f"written to {args.out}/results.{{json,csv,md}} and perturbation.png")
    return 0
