"""Distil DGE routers from a dense teacher on unlabelled images.

The student is the DGE version of the teacher (``from_dense``); by default its
routers train together with the backbone's LayerNorms and biases (BitFit-style,
~37k parameters for DeiT-Tiny); every other weight stays frozen.  Loss per batch:

    T^2 * KL(teacher_T || student_T)  +  lambda * (dynamic / static MACs - gamma)^2

with softened distributions at temperature T, and the budget term of the
original implementation (ratio of batch means, corrected MAC accounting).
Images are decoded once into a uint8 cache and the teacher's logits for every
image and its mirror image are computed once, so a step costs one student
forward and backward.  Checkpoints every N steps hold the trainable
parameters, the optimiser, the schedule position and every RNG state, so that
``resume=True`` continues bit for bit.  Under torchrun each rank takes its share
of every global batch (DDP over gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from dge_explain.distributed import Distributed
from dge_explain.console import say
from dge_explain.data.folders import printable
from dge_explain.training import splits
from dge_explain.training.config import TrainConfig
from dge_explain.paths import read_json_lines
from dge_explain.complexity import budget_loss, dge_complexity
from dge_explain.data import Preprocessing, list_images, load_rgb
from dge_explain.models import dge_modules, from_dense, load_checkpoint

# Named parameter groups for --train; anything else is read as a regular expression.
PARAMETER_GROUPS = {
    "routers": r"\.dge\.router\.",
    "norms": r"(^|\.)norm\d?\.",
    "biases": r"\.bias$",
    "head": r"^head(_dist)?\.",
    "mlp": r"\.mlp\.",
    "attn": r"\.attn\.",
}
@dataclass
class TrainResult:
    out: Path
    steps: int
    last: dict = field(default_factory=dict)


def _trainable_names(model: nn.Module, groups) -> list[str]:
    patterns = [re.compile(PARAMETER_GROUPS.get(g, g)) for g in groups]
    names = [n for n, _ in model.named_parameters() if any(p.search(n) for p in patterns)]
    if not names:
        raise ValueError(f"--train {list(groups)} selects no parameter; groups: "
                         f"{sorted(PARAMETER_GROUPS)} or a regular expression")
    return names


def _image_cache(files: list[Path], preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 [N, 3, size, size]: the classification resize and centre crop."""
    geometry = preprocessing.classification_geometry()
    size = preprocessing.input_size
    cache = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(tqdm(files, desc="decoding images", leave=False)):
        cache[i] = geometry(load_rgb(path))
    return cache


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, cache: torch.Tensor, preprocessing: Preprocessing, device,
                    batch_size: int) -> torch.Tensor:
    """[N, 2, classes]: logits of every image and of its mirror image."""
    teacher.eval()
    outputs = []
    for start in tqdm(range(0, len(cache), batch_size), desc="teacher logits", leave=False):
        images = preprocessing.normalise(cache[start:start + batch_size].to(device))
        outputs.append(torch.stack([teacher(images), teacher(images.flip(-1))], 1).float().cpu())
    return torch.cat(outputs)


def _lr_factor(config: TrainConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _teacher_maps(teacher: nn.Module, cache: torch.Tensor, preprocessing: Preprocessing, method: str, device,
                  batch_size: int) -> torch.Tensor:
    """[N, 2, h, w] float32: the teacher's `method` map of every image and of its
    mirror image, averaged over each token (patch_size x patch_size pixels)."""
    from dge_explain.explainers import batch_maps, build_explainers

    explainers = build_explainers(teacher, [method])
    patch = teacher.patch_embed.patch_size[0]
    maps = []
    for start in tqdm(range(0, len(cache), batch_size), desc=f"teacher {method} maps", leave=False):
        images = preprocessing.normalise(cache[start:start + batch_size].to(device))
        keys = [str(i) for i in range(start, start + len(images))]
        both = [next(iter(batch_maps(explainers, view, keys).values())) for view in (images, images.flip(-1))]
        maps.append(torch.stack([F.avg_pool2d(m.float()[:, None], patch)[:, 0] for m in both], 1))
    return torch.cat(maps)


def map_loss(logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean over layers of BCE(p_finest, target), with each layer's router logits
    [B, Hr, Wr, K] (option 0 the finest) and the teacher's maps [B, h, w] averaged
    to the router's regions and scaled to 0..1 per image (a flat map: 0.5)."""
    losses = []
    for layer_logits in logits:
        regions = F.adaptive_avg_pool2d(targets[:, None], layer_logits.shape[1:3])[:, 0]
        low = regions.flatten(1).min(1).values.view(-1, 1, 1)
        span = regions.flatten(1).max(1).values.view(-1, 1, 1) - low
        target = torch.where(span > 0, (regions - low) / span.clamp(min=1e-12), torch.full_like(regions, 0.5))
        log_p = layer_logits.float().log_softmax(-1)
        margin = log_p[..., 0] - torch.logsumexp(log_p[..., 1:], -1)   # the log-odds of the finest option
        losses.append(F.binary_cross_entropy_with_logits(margin, target))
    return torch.stack(losses).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    return F.kl_div(F.log_softmax(student.float() / temperature, -1),
                    F.log_softmax(teacher.float() / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def _save_checkpoint(out: Path, state: dict) -> None:
    partial = out / "checkpoint.pt.partial"
    torch.save(state, partial)
    os.replace(partial, _checkpoint_path(out))


def _truncate_log(log: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (and a line cut
    off by a crash)."""
    kept = [entry for entry in read_json_lines(log) if entry["step"] <= step]
    log.write_text("".join(json.dumps(entry) + "\n" for entry in kept))


def _previous_checkpoint(out: Path, saved_config: dict, resume: bool) -> dict | None:
    """The checkpoint a --resume continues (refused if it computes something else),
    None for a fresh run (refused if the folder already holds one)."""
    if resume and _checkpoint_path(out).exists():
        checkpoint = torch.load(_checkpoint_path(out), map_location="cpu", weights_only=True)
        # Where the run lives and how often it saves may change; what it computes may not
        # (weights and images are compared as resolved paths).
        free = ("out", "home", "max_steps", "checkpoint_every")
        changed = {k: (checkpoint["config"].get(k), v) for k, v in saved_config.items()
                   if k not in free and checkpoint["config"].get(k) != v}
        if changed:
            raise ValueError(f"--resume with a different configuration than {out}: {changed}")
        return checkpoint
    if _checkpoint_path(out).exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or "
                              "choose another --out")
    return None


def _student(dense: nn.Module, config: TrainConfig, device) -> tuple[nn.Module, list[str], list[dict]]:
    """(the DGE student, its trainable parameter names, the optimiser's groups:
    routers at lr, anything else trained at backbone_lr)."""
    student = from_dense(dense, phi=config.phi).to(device)
    trainable = _trainable_names(student, config.train)
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(name in trainable)
    routers = [p for n, p in student.named_parameters() if n in trainable and ".dge.router." in n]
    others = [p for n, p in student.named_parameters() if n in trainable and ".dge.router." not in n]
    groups = [{"params": routers, "lr": config.lr}]
    if others:
        groups.append({"params": others, "lr": config.backbone_lr})
    return student, trainable, groups


class _Batches:
    """The global batch of a step (a fixed order and flips per epoch, from the seed)
    and this rank's share of it, as normalised images and the teacher's logits."""

    def __init__(self, cache: torch.Tensor, targets: torch.Tensor, config: TrainConfig,
                 preprocessing: Preprocessing, distributed: Distributed, maps: torch.Tensor | None = None):
        self.cache, self.targets, self.config, self.maps = cache, targets, config, maps
        self.preprocessing, self.distributed = preprocessing, distributed
        self.per_epoch = max(1, len(cache) // config.batch_size)

    def __call__(self, step: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int]:
        """(images, teacher logits, teacher maps or None, epoch, global batch size) of a step."""
        epoch, within = divmod(step, self.per_epoch)
        size = self.config.batch_size
        order_rng = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.cache), generator=order_rng)
        flips = torch.rand(len(self.cache), generator=order_rng) < 0.5 if self.config.flip else \
            torch.zeros(len(self.cache), dtype=torch.bool)
        batch = order[within * size:(within + 1) * size]
        share = batch[self.distributed.rank::self.distributed.world]
        flipped = flips[share]
        images = self.preprocessing.normalise(self.cache[share].to(device))
        images = torch.where(flipped.to(device).view(-1, 1, 1, 1), images.flip(-1), images)
        maps = None if self.maps is None else self.maps[share, flipped.long()].to(device)
        return images, self.targets[share, flipped.long()].to(device), maps, epoch, len(batch)


def _save_run(out: Path, step: int, saved_config: dict, student: nn.Module, trainable: list[str], optimizer,
              scheduler, scaler, distributed: Distributed) -> None:
    """A checkpoint that resumes bit for bit: trainable parameters, optimiser,
    schedule, scaler and every rank's RNG state."""
    rng = [_rng_state()]
    if distributed.enabled:
        gathered = [None] * distributed.world
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if distributed.rank == 0:
        _save_checkpoint(out, {
            "step": step, "config": saved_config,
            "trainable": {n: p.detach().cpu() for n, p in student.named_parameters() if n in trainable},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng})


def _warn_of_evaluation_images(files: list[Path], home) -> None:
    """Loudly: training on an image of a published evaluation set makes its maps
    there no longer held out (checked by content, see training.splits)."""
    try:
        shared = splits.overlaps(files, home)
    except FileNotFoundError:   # no data home: there are no named evaluation sets to protect
        return
    for name, pairs in shared.items():
        examples = ", ".join(f"{printable(mine)} = {printable(theirs)}" for mine, theirs in pairs[:3])
        say(f"WARNING: {len(pairs)} of the {len(files)} training images are in the evaluation set '{name}' "
            f"({splits.EVALUATION[name]}): maps measured there after this training are not held out. "
            f"e.g. {examples}")


def _recording_router_logits(student: nn.Module, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """{layer: the router logits of the last forward} of the chosen DGE layers
    (1-based; all when none are chosen), kept with their graph for the map loss."""
    dges = dge_modules(student)
    chosen = layers or tuple(range(1, len(dges) + 1))
    bad = [layer for layer in chosen if not 1 <= layer <= len(dges)]
    if bad:
        raise ValueError(f"--map-layers {bad} out of range: the model has DGE layers 1..{len(dges)}")
    recorded: dict[int, torch.Tensor] = {}
    for layer in chosen:
        dges[layer - 1].router.register_forward_hook(
            lambda module, args, out, layer=layer: recorded.__setitem__(layer, out))
    return recorded


def _restore(checkpoint: dict | None, student: nn.Module, optimizer, scheduler, scaler, distributed: Distributed,
             log_path: Path) -> int:
    """The step to start from: a checkpoint's state put back (and the log cut to
    it), or 0 with the log of an earlier run removed."""
    if checkpoint is None:
        if distributed.rank == 0 and log_path.exists():
            log_path.unlink()
        return 0
    student.load_state_dict(checkpoint["trainable"], strict=False)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    _set_rng_state(checkpoint["rng"][distributed.rank])
    if distributed.rank == 0:
        _truncate_log(log_path, checkpoint["step"])
    return checkpoint["step"]


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    config = config.resolved()
    distributed = Distributed(config.device)
    device = distributed.device
    out = Path(config.out)
    dense = timm.create_model(config.dense_model, img_size=config.image_size)
    load_checkpoint(dense, config.weights)
    preprocessing = Preprocessing.of(dense, input_size=config.image_size, mean=config.mean, std=config.std,
                                     interpolation=config.interpolation, crop_pct=config.crop_pct)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    saved_config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    saved_config["world_size"] = distributed.world
    saved_config["preprocessing"] = preprocessing.as_dict()
    saved_config["images_in_home"] = [splits.home_relative(spec, config.home) for spec in config.images]
    checkpoint = _previous_checkpoint(out, saved_config, resume)

    torch.manual_seed(config.seed + distributed.rank)
    student, trainable, param_groups = _student(dense, config, device)
    dense.to(device)
    files = [f for spec in config.images for f in list_images(spec)]
    if distributed.rank == 0:
        _warn_of_evaluation_images(files, config.home)
    cache = _image_cache(files, preprocessing)
    maps = None if config.map_target is None else \
        _teacher_maps(dense, cache, preprocessing, config.map_target, device, 32)
    batches = _Batches(cache, _teacher_logits(dense, cache, preprocessing, device, 64), config, preprocessing,
                       distributed, maps)
    del dense
    router_logits = _recording_router_logits(student, config.map_layers) if maps is not None else None

    total_steps = batches.per_epoch * config.epochs
    optimizer = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(config, step, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
    model = student
    if distributed.enabled:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)

    step = _restore(checkpoint, student, optimizer, scheduler, scaler, distributed, log_path)

    last_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
    student.train()
    bar = tqdm(total=last_step, initial=step, desc="distilling", disable=not progress or distributed.rank)
    last = {}
    while step < last_step:
        started = time.perf_counter()
        images, teacher_logits, teacher_maps, epoch, batch_size = batches(step, device)
        with torch.autocast(device.type, enabled=config.amp):
            logits = model(images)
        kl = distillation_loss(logits, teacher_logits, config.temperature)
        complexity = dge_complexity(student)
        budget = budget_loss(complexity, config.gamma, config.budget_weight)
        follow = torch.zeros(()) if teacher_maps is None else map_loss(list(router_logits.values()), teacher_maps)
        loss = kl + budget.float() + config.map_weight * follow.to(kl.device)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - started

        last = {"step": step, "epoch": epoch, "loss": distributed.mean(loss.item()),
                "kl": distributed.mean(kl.item()), "budget": distributed.mean(budget.item()),
                "map": distributed.mean(follow.item()),
                "ratio": distributed.mean(complexity.ratio.item()),
                "fine": distributed.mean(float(torch.stack(complexity.fine_fraction).mean())),
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": batch_size / max(elapsed, 1e-9)}
        if distributed.rank == 0:
            with log_path.open("a") as handle:
                handle.write(json.dumps(last) + "\n")
        bar.set_postfix(loss=f"{last['loss']:.4f}", ratio=f"{last['ratio']:.3f}",
                        img_s=f"{last['images_per_s']:.1f}")
        bar.update()
        if step % config.checkpoint_every == 0 or step == last_step:
            _save_run(out, step, saved_config, student, trainable, optimizer, scheduler, scaler, distributed)
    bar.close()
    if distributed.rank == 0:
        save_file({n: p.detach().cpu().contiguous() for n, p in student.named_parameters() if n in trainable},
                  str(out / "trained.safetensors"),
                  metadata={"config": json.dumps(saved_config), "steps": str(step)})
    return TrainResult(out, step, last)
