"""dge-explain train: distil DGE routers from a dense teacher; one flag per
TrainConfig field, so that a setting and its flag cannot drift apart."""
from __future__ import annotations

import dataclasses

from dge_explain.training.config import TrainConfig

from . import common

TYPES = {"positive_int": common.positive_int, "non_negative_int": common.non_negative_int}


def add_parser(commands):
    parser = common.subcommand(
        commands, "train", "distil DGE routers from a dense teacher",
        """
        Router distillation on unlabelled images: the DGE version of the teacher learns to
        match its logits (KL at temperature T) under a MAC budget gamma; routers, LayerNorms
        and biases train by default. Checkpoints every --checkpoint-every steps; --resume
        continues bit for bit. The result, trained.safetensors, loads with --trained.""",
        """
        dge-explain train --out runs/distil --epochs 12 --gamma 0.5
        dge-explain train --out runs/distil --resume
        dge-explain train --out runs/smoke --max-steps 2 --images photos --batch-size 8""")
    for setting in dataclasses.fields(TrainConfig):
        meta = dict(setting.metadata)
        if meta.pop("preprocessing", False):
            continue
        flag = "--" + setting.name.replace("_", "-")
        kwargs = {"help": meta.pop("help")}
        if setting.type in ("bool", bool):
            if setting.default:   # on by default: the flag turns it off
                parser.add_argument(f"--no-{setting.name.replace('_', '-')}", dest=setting.name,
                                    action="store_false", help=f"no {kwargs['help']}")
            else:
                parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if setting.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = list(setting.default) if isinstance(setting.default, tuple) else setting.default
        kind = meta.pop("type", None)
        kwargs["type"] = TYPES[kind] if kind else _scalar_type(setting)
        parser.add_argument(flag, **kwargs, **meta)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    common.add_preprocessing_arguments(parser, crop=True, size=False)
    return parser


def _scalar_type(setting):
    text = str(setting.type)
    return float if "float" in text else int if text.startswith("int") else str


def run(args) -> int:
    from dge_explain import paths
    from dge_explain.training.distill import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["images"] = tuple(paths.expand(spec, args.home) for spec in args.images)
    values["phi"], values["train"], values["map_layers"] = tuple(args.phi), tuple(args.train), tuple(args.map_layers)
    config = TrainConfig(**values)
    result = train(config, resume=args.resume)
    print(f"{result.steps} steps; last: {result.last}; trained parameters in {result.out}/trained.safetensors")
    return 0
