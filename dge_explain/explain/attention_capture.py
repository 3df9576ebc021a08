"""Attention probabilities for the attention-based explainers (raw attention,
rollout, attention GradCAM, relevance), recorded only when one is asked for.

The fast paths never materialise the attention matrix: timm's ``Attention``
calls fused scaled-dot-product attention, and dge-explain's attention the
compiled varlen kernel.  While an ``AttentionPass`` runs, timm's modules take
their explicit path (``fused_attn = False``; the probabilities are read at
``attn_drop``), and dge-explain's compute softmax(scale Q K^T) explicitly (the
pure-PyTorch attention the reference op is tested against), per sample for
packed queries.

Token level: the probabilities are returned per block as [B, h, N, Nk] over the
block's tokens.  In a DGE block a coarse query stands for all tokens of its patch
(decompress copies its output to them), so a token's row is the row of the query
that covers it; the gradient of that shared row is split evenly over the tokens
it covers (as compress's backward splits a gradient), so that token-level
gradients sum to the query's.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from dge_explain.models import PyramidVisionTransformer
from dge_explain.models.attention import CrossAttention
from dge_explain.ops import reference


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's attention modules in forward order, or a ValueError naming one
    whose probabilities cannot be read."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, CrossAttention) or type(module) is Attention:
            found.append((name, module))
        elif name.endswith(".attn") and isinstance(module, nn.Module):
            raise ValueError(f"{name} is a {type(module).__name__}: attention explainers read timm's "
                             "Attention and dge-explain's attention modules only")
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention module to explain")
    return found


def token_attention(probs: torch.Tensor, table) -> torch.Tensor:
    """Packed query rows [L, h, Nk] -> token rows [B, h, N, Nk] (each token takes the
    row of the query covering it)."""
    covering, _ = reference.token_rows(table)
    return probs[covering].permute(0, 2, 1, 3)


def split_over_tokens(grad: torch.Tensor, table) -> torch.Tensor:
    """Gradient of packed rows [L, h, Nk] -> [B, h, N, Nk], each row's gradient
    shared evenly by the tokens it covers."""
    covering, area = reference.token_rows(table)
    return (grad / area.to(grad.dtype).view(-1, 1, 1))[covering].permute(0, 2, 1, 3)


@dataclass
class AttentionRecord:
    probs: list[torch.Tensor]              # per block, [B, h, N, Nk]
    grads: Optional[list]                  # the target logits' gradient of each block asked for
                                           # (None for the others), or None without gradients
    logits: torch.Tensor
    targets: torch.Tensor                  # the explained class of each image


class _Recorder:
    def __init__(self):
        self.blocks: list[tuple[torch.Tensor, object]] = []   # (probabilities as computed, table)

    def __call__(self, probs: torch.Tensor, table) -> None:
        self.blocks.append((probs, table))


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[_Recorder]:
    """Inside the block, every attention module of `model` records its probabilities."""
    recorder = _Recorder()
    undo = []
    for name, module in attention_modules(model):
        if isinstance(module, CrossAttention):
            module.capture = recorder
            undo.append(lambda module=module: setattr(module, "capture", None))
        else:
            fused = module.fused_attn
            module.fused_attn = False
            handle = module.attn_drop.register_forward_hook(lambda m, args, out: recorder(args[0], None))
            undo.append(lambda module=module, fused=fused, handle=handle: (
                setattr(module, "fused_attn", fused), handle.remove()))
    try:
        yield recorder
    finally:
        for restore in undo:
            restore()


GRADIENT_BLOCKS = (None, "last", "all")


def gradient_blocks(explainers) -> str | None:
    """The blocks whose attention gradients a set of explainers needs, as for attention_pass."""
    wanted = {e.gradient_blocks for e in explainers}
    return max(wanted, key=GRADIENT_BLOCKS.index, default=None)


def _attention_gradients(recorder: _Recorder, target: torch.Tensor, blocks: str) -> list:
    """d target / d probabilities of the last block or of all blocks (None for the
    others); autograd walks back only as far as the earliest block asked for."""
    raws = [raw for raw, _ in recorder.blocks]
    wanted = raws if blocks == "all" else raws[-1:]
    found = torch.autograd.grad(target, wanted, allow_unused=True)
    return [None] * (len(raws) - len(wanted)) + [torch.zeros_like(raw) if grad is None else grad
                                                 for raw, grad in zip(wanted, found)]


def _token_level(recorder: _Recorder, raw_grads: list | None):
    probs = [raw.detach() if table is None else token_attention(raw.detach(), table)
             for raw, table in recorder.blocks]
    if raw_grads is None:
        return probs, None
    grads = [grad if grad is None or table is None else split_over_tokens(grad, table)
             for grad, (_, table) in zip(raw_grads, recorder.blocks)]
    return probs, grads


def attention_pass(model: nn.Module, images: torch.Tensor, labels=None, gradients: str | None = None,
                   riders=()) -> tuple[AttentionRecord, list]:
    """One forward pass with every block's attention recorded (riders' captures
    active too); with `gradients` ("last" or "all": the blocks whose attention
    gradients are wanted) one backward pass from the sum of the target logits
    (labels, or the predicted classes), only as deep as those blocks.  No parameter
    gradient is computed."""
    if gradients not in GRADIENT_BLOCKS:
        raise ValueError(f"gradients must be one of {GRADIENT_BLOCKS}, got {gradients!r}")
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    with contextlib.ExitStack() as stack:
        recorder = stack.enter_context(recording(model))
        captured = [stack.enter_context(rider.capturing()) for rider in riders]
        try:
            for parameter in trainable:
                parameter.requires_grad_(False)
            # an input that requires grad makes autograd record the graph, parameters frozen
            inputs = images.detach().requires_grad_(gradients is not None)
            with torch.set_grad_enabled(gradients is not None):
                logits = model(inputs)
                targets = logits.argmax(1) if labels is None else torch.as_tensor(labels, device=logits.device)
                raw_grads = None if gradients is None else _attention_gradients(
                    recorder, logits.gather(1, targets.view(-1, 1)).sum(), gradients)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)
            model.train(was_training)
    probs, grads = _token_level(recorder, raw_grads)
    return AttentionRecord(probs, grads, logits.detach(), targets.detach()), captured


def layout(model: nn.Module, images: torch.Tensor) -> tuple[int, tuple[int, int], int]:
    """(extra tokens before the spatial ones, token grid, stride in pixels) of the
    tokens the last block attends over."""
    height, width = images.shape[-2:]
    if isinstance(model, PyramidVisionTransformer):
        return 1, (height // 32, width // 32), 32
    stride = model.patch_embed.proj.stride[0]
    return model.num_prefix_tokens, (height // stride, width // stride), stride


def cls_row_maps(rows: torch.Tensor, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """cls rows over the key tokens [B, Nk] -> maps on the input grid [B, H, W]
    (extra tokens dropped, bilinear upsampling by the token stride, as the protocol)."""
    extra, grid, _ = layout(model, images)
    spatial = rows[:, extra:].reshape(rows.shape[0], 1, *grid).float()
    return torch.nn.functional.interpolate(spatial, size=tuple(images.shape[-2:]), mode="bilinear",
                                           align_corners=False)[:, 0]


def require_token_attention(model: nn.Module, method: str) -> None:
    """Rollout and relevance multiply token-to-token attention across blocks."""
    if isinstance(model, PyramidVisionTransformer):
        raise ValueError(f"{method} multiplies token-to-token attention across blocks; PVT's stages 1-3 "
                         "attend to spatially reduced keys and its patch embeddings change the token set "
                         "between stages, so it is not defined for PVT (attention and attention-gradcam, "
                         "on the last block, are)")


class AttentionExplainer:
    """An explainer computed from the recorded attention (and, with
    ``gradient_blocks``, its gradients): subclasses name themselves and implement
    ``map_from``.  Called alone it runs its own pass; ``batch_maps`` runs one pass
    for every attention explainer of a batch (gating maps riding along).
    ``gradient_blocks``: None, or the blocks whose attention gradients it reads
    ("last" or "all")."""

    name = ""
    gradient_blocks: str | None = None
    needs_token_attention = False

    @property
    def class_specific(self) -> bool:
        return self.gradient_blocks is not None

    def __init__(self, model: nn.Module):
        if self.needs_token_attention:
            require_token_attention(model, self.name)
        self.model = model
        self.blocks = len(attention_modules(model))

    def names(self) -> list[str]:
        return [self.name]

    def describe(self) -> dict[str, dict]:
        return {self.name: {"method": self.name, "blocks": self.blocks}}

    def map_from(self, record: AttentionRecord, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, ids=None, labels=None) -> dict[str, torch.Tensor]:
        record, _ = attention_pass(self.model, images, labels, self.gradient_blocks)
        return {self.name: self.map_from(record, images)}
