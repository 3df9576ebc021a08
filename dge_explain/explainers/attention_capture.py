"""Attention probabilities for the attention-based explainers (raw attention,
rollout, attention GradCAM, relevance), recorded only when one is asked for.

The fast paths never materialise the attention matrix: timm's ``Attention``
calls fused scaled-dot-product attention, and dge-explain's attention the
compiled varlen kernel.  While an ``attention_pass`` runs, timm's modules take
their explicit path (``fused_attn = False``; the probabilities are read at
``attn_drop``, their gradients by autograd).  dge-explain's modules keep their
kernels and hand over q, k, v and the per-head output O: the probabilities are
computed aside from q and k (outside autograd), and since O = P V (eval mode),
the gradient with respect to P is dO V^T, from the gradient of O.  The forward
and backward are the model's own; only each block's P (and dO V^T) come extra.

Token level: a block's attention is a matrix over its tokens, [B, h, N, Nk].  In
a DGE block a coarse query stands for all tokens of its patch (decompress copies
its output to them), so a token's row is the row of the query that covers it;
the gradient of that shared row is split evenly over the tokens it covers (as
compress's backward splits a gradient), so that token-level gradients sum to the
query's.  The record keeps such blocks packed, one row per query ([L, h, Nk],
gradients already divided by the area), and applies the token-level matrix
through the covering index (``AttentionRecord.times``) instead of expanding it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from timm.models.vision_transformer import Attention
from torch import nn

from dge_explain.models.families import adapter_for, check_image_size, find_adapter
from dge_explain.models.attention import CrossAttention, attention_probabilities, packed_products
from dge_explain.ops import reference

from .base import Explainer


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


@dataclass
class AttentionRecord:
    probs: list[torch.Tensor]              # per block, [B, h, N, Nk] token rows, or [L, h, Nk] packed
                                           # query rows where `tables` gives the block a patch table
    grads: Optional[list]                  # the target logits' gradient of each block asked for (None
                                           # for the others), in the layout of `probs`, a packed row's
                                           # divided by its area; or None without gradients
    logits: torch.Tensor
    targets: torch.Tensor                  # the explained class of each image
    tables: Optional[list] = None          # per block, the patch table of packed rows, or None

    def __post_init__(self):
        self._token_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, block: int):
        return self.tables[block] if self.tables else None

    def token_rows(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, N] the packed row covering each token, [L] each row's area) of a packed block."""
        block %= len(self.probs)
        if block not in self._token_rows:
            self._token_rows[block] = reference.token_rows(self._table(block))
        return self._token_rows[block]

    def covering(self, block: int) -> torch.Tensor:
        return self.token_rows(block)[0]

    def at_tokens(self, values: torch.Tensor, block: int) -> torch.Tensor:
        """Per-row values [L, ...] of a packed block -> [B, N, ...] (each token takes its
        query's); token-level values [B, N, ...] as they are."""
        return values if self._table(block) is None else values[self.covering(block)]

    def cls_rows(self, values: torch.Tensor, block: int) -> torch.Tensor:
        """The class token's row of per-head values: [B, h, N, Nk] or packed [L, h, Nk] -> [B, h, Nk]."""
        return values[:, :, 0] if self._table(block) is None else values[self.covering(block)[:, 0]]

    def times(self, row: torch.Tensor, matrix: torch.Tensor, block: int) -> torch.Tensor:
        """row [B, N] times the block's token-level matrix, given as [B, N, Nk] or as
        packed rows [L, Nk]: sum over queries of (the row summed over the query's
        tokens) x the query's row."""
        table = self._table(block)
        if table is None:
            return (row[:, None] @ matrix)[:, 0]
        pooled = row.new_zeros(len(matrix)).index_add_(0, self.covering(block).flatten(), row.flatten())
        sample = table.rows[:, 0].to(matrix.device, torch.long)
        return row.new_zeros(row.shape[0], matrix.shape[-1]).index_add_(0, sample, pooled[:, None] * matrix)

    def cls_one_hot(self) -> torch.Tensor:
        """[B, Nk] float64, 1 at the class token: the row that matrix products start from."""
        row = torch.zeros(len(self.targets), self.probs[-1].shape[-1], dtype=torch.float64,
                          device=self.probs[-1].device)
        row[:, 0] = 1
        return row


@dataclass
class _Block:
    probs: torch.Tensor                    # as the module computes them: packed [L, h, Nk] or [B, h, Lq, Nk]
    source: torch.Tensor                   # the tensor whose gradient gives the probabilities' gradient
    values: Optional[torch.Tensor]         # v [B, h, Nk, d] where that tensor is the output O = P V
    table: object                          # the patch table of packed queries, else None

    def probability_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of `source` -> the probabilities' (dO V^T where source is O)."""
        return grad if self.values is None else packed_products(grad, self.values, self.table)


class _Recorder:
    def __init__(self):
        self.blocks: list[_Block] = []

    def explicit(self, probs: torch.Tensor) -> None:
        """timm's explicit path: the probabilities themselves, in the graph."""
        self.blocks.append(_Block(probs, probs, None, None))

    def __call__(self, q, k, v, out, table) -> None:
        """dge-explain's modules: inputs and output of the fused or compiled kernel."""
        with torch.no_grad():
            probs = attention_probabilities(q, k, table)
        self.blocks.append(_Block(probs, out, v.detach(), table))


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
            handle = module.attn_drop.register_forward_hook(lambda m, args, out: recorder.explicit(args[0]))
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
    wanted = recorder.blocks if blocks == "all" else recorder.blocks[-1:]
    found = torch.autograd.grad(target, [block.source for block in wanted], allow_unused=True)
    gradients = [torch.zeros_like(block.probs) if grad is None else block.probability_gradient(grad)
                 for block, grad in zip(wanted, found)]
    return [None] * (len(recorder.blocks) - len(wanted)) + gradients


def attention_pass(model: nn.Module, images: torch.Tensor, labels=None,
                   gradients: str | None = None) -> AttentionRecord:
    """One forward pass with every block's attention recorded; with `gradients` ("last" or "all": the blocks whose attention
    gradients are wanted) one backward pass from the sum of the target logits
    (labels, or the predicted classes), only as deep as those blocks.  No parameter
    gradient is computed."""
    if gradients not in GRADIENT_BLOCKS:
        raise ValueError(f"gradients must be one of {GRADIENT_BLOCKS}, got {gradients!r}")
    check_image_size(model, images.shape[-2:])
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    with contextlib.ExitStack() as stack:
        recorder = stack.enter_context(recording(model))
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
    record = AttentionRecord([block.probs.detach() for block in recorder.blocks], raw_grads, logits.detach(),
                             targets.detach(), [block.table for block in recorder.blocks])
    if raw_grads is not None:   # a packed row's gradient, divided by its area: each covered token's share
        record.grads = [grad if grad is None or table is None
                        else grad / record.token_rows(index)[1].to(grad.dtype).view(-1, 1, 1)
                        for index, (grad, table) in enumerate(zip(raw_grads, record.tables))]
    return record


def layout(model: nn.Module, images: torch.Tensor) -> tuple[int, tuple[int, int], int]:
    """(extra tokens before the spatial ones, token grid, stride in pixels) of the
    tokens the last block attends over."""
    return adapter_for(model).last_tokens(model, tuple(images.shape[-2:]))


def cls_row_maps(rows: torch.Tensor, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """cls rows over the key tokens [B, Nk] -> maps on the input grid [B, H, W]
    (extra tokens dropped, bilinear upsampling by the token stride, as the protocol)."""
    extra, grid, _ = layout(model, images)
    spatial = rows[:, extra:].reshape(rows.shape[0], 1, *grid).float()
    return torch.nn.functional.interpolate(spatial, size=tuple(images.shape[-2:]), mode="bilinear",
                                           align_corners=False)[:, 0]


def require_token_attention(model: nn.Module, method: str) -> None:
    """Rollout and relevance multiply token-to-token attention across blocks."""
    refusal = adapter_for(model).token_attention_refusal
    if refusal is not None:
        raise ValueError(f"{method} multiplies token-to-token attention across blocks; {refusal}")


class AttentionExplainer(Explainer):
    """An explainer computed from the recorded attention (and, with
    ``gradient_blocks``, its gradients): subclasses name themselves and implement
    ``map_from``.  Called alone it runs its own pass; ``batch_maps`` runs one pass
    for every attention explainer of a batch (gating maps riding along).
    ``gradient_blocks``: None, or the blocks whose attention gradients it reads
    ("last" or "all")."""

    name = ""
    shared_pass = "attention"
    gradient_blocks: str | None = None
    needs_token_attention = False

    @property
    def class_specific(self) -> bool:
        return self.gradient_blocks is not None

    def __init__(self, model: nn.Module):
        adapter = find_adapter(model)
        if adapter is not None and adapter.attention_refusal is not None:
            raise ValueError(f"{self.name} reads attention probabilities over tokens; {adapter.attention_refusal}")
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
        return self.compute_together([self], images, labels)

    @classmethod
    def compute_together(cls, explainers, images, labels=None):
        """One attention pass (with a backward only as deep as the group's
        gradients are needed) for every attention explainer of a batch."""
        record = attention_pass(explainers[0].model, images, labels, gradient_blocks(explainers))
        return {e.name: e.map_from(record, images) for e in explainers}
