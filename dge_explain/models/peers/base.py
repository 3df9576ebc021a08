"""How a token-reduction method (ToMe, EViT) runs inside a timm ViT without
changing its weights: each block's class becomes a subclass of timm's ``Block``
whose forward reduces the tokens between attention and MLP, as both papers place
the reduction.  The method is one ``TokenReduction`` object shared by the blocks
of a model: its settings, and the state a forward carries from block to block
(token sizes for ToMe's proportional attention, where each input patch went when
maps are traced).  Patching swaps classes only: the state dict, the parameters
and a model's other users are untouched, and ``remove_token_reduction`` swaps
them back."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn

from ..families import find_adapter, model_name
from ..gating import dge_modules

PLAIN_VIT = "token reduction (ToMe, EViT) runs on plain token ViTs only"


def plain_vit_refusal(model: nn.Module) -> str | None:
    """None where ToMe and EViT can patch the model, else why not (one line)."""
    adapter = find_adapter(model)
    reason = None
    if adapter is None or adapter.family != "vit":
        family = adapter.family if adapter is not None else "unknown"
        reason = f"it is a {family} model, not a ViT with one token sequence"
    elif dge_modules(model):
        reason = "it has DGE routers (its blocks already choose their own granularity)"
    else:
        odd = [f"blocks.{i} is a {type(b).__name__}" for i, b in enumerate(model.blocks)
               if type(b) not in (Block, ReducingBlock) or type(b.attn) is not Attention]
        if odd:
            reason = f"{odd[0]} (timm's Block with its Attention expected)"
        elif getattr(model, "attn_pool", None) is not None or getattr(model, "global_pool", None) != "token":
            # merged and fused tokens stand for several patches: an unweighted pool would
            # count them once, so only the class-token read-out is the dense model's
            reason = f"it pools its tokens by {getattr(model, 'global_pool', None)!r} (class-token pooling needed)"
    return None if reason is None else f"{model_name(model)}: {PLAIN_VIT}; {reason}"


def check_plain_vit(model: nn.Module) -> None:
    reason = plain_vit_refusal(model)
    if reason is not None:
        raise ValueError(reason)


class TokenReduction:
    """A method's settings and one forward's state.  Subclasses say how many
    tokens leave a block (``tokens_after``, from the counts alone, so that MACs
    are known before any forward), reduce them (``reduce``) and give each token's
    traced value (``token_values``)."""

    def __init__(self, depth: int, prefix: int):
        self.depth, self.prefix = depth, prefix
        self.trace_layers: tuple[int, ...] = ()     # 1-based blocks whose maps a forward records
        self.size: torch.Tensor | None = None       # [B, N] patches per token; None: all 1
        self.source: torch.Tensor | None = None     # [B, patches] the token now holding each patch
        self.traced: dict[int, torch.Tensor] = {}   # layer -> [B, patches] value of each patch's token

    def tokens_after(self, index: int, tokens: int) -> int:
        """Tokens leaving block `index` (0-based) when `tokens` enter it."""
        raise NotImplementedError

    def needs_qkv(self, index: int, tokens: int) -> bool:
        return self.tokens_after(index, tokens) < tokens

    def attention_bias(self) -> torch.Tensor | None:
        """Added to the attention logits of every query ([B, 1, 1, N]), or None."""
        return None

    def reduce(self, index: int, x: torch.Tensor, qkv: torch.Tensor | None, attn: Attention
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the block's tokens after reduction, the new position of each old token, or
        None when nothing moved or no map is traced)."""
        raise NotImplementedError

    def token_values(self, index: int) -> torch.Tensor:
        """[B, N] what a traced map shows of each token after block `index`."""
        raise NotImplementedError

    def begin(self, x: torch.Tensor) -> None:
        self.size = None
        self.traced = {}
        patches = x.shape[1] - self.prefix
        self.source = (torch.arange(patches, device=x.device) + self.prefix).expand(x.shape[0], patches) \
            if self.trace_layers else None

    def after_block(self, index: int, moved: torch.Tensor | None) -> None:
        if self.source is None:
            return
        if moved is not None:
            self.source = moved.gather(1, self.source)
        if index + 1 in self.trace_layers:
            self.traced[index + 1] = self.token_values(index).gather(1, self.source)


def split_qkv(attn: Attention, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, h, N, d] from the qkv projection's output, normalised as the module does."""
    batch, tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k)


def _attention(attn: Attention, x: torch.Tensor, bias, keep_qkv: bool):
    """timm's own attention forward (fused or explicit, as the module is set), with
    the qkv projection's output kept where the reduction needs keys or queries."""
    if not keep_qkv:
        return attn(x, attn_mask=bias), None
    seen = []
    handle = attn.qkv.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        out = attn(x, attn_mask=bias)
    finally:
        handle.remove()
    return out, seen[0]


class ReducingBlock(Block):
    """timm's Block with its tokens reduced between attention and MLP."""

    token_reduction: TokenReduction
    block_index: int

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("token reduction changes the sequence length: attention masks cannot follow it")
        reduction, index = self.token_reduction, self.block_index
        if index == 0:
            reduction.begin(x)
        out, qkv = _attention(self.attn, self.norm1(x), reduction.attention_bias(),
                              reduction.needs_qkv(index, x.shape[1]))
        x = x + self.drop_path1(self.ls1(out))
        x, moved = reduction.reduce(index, x, qkv, self.attn)
        reduction.after_block(index, moved)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def token_reduction_of(model: nn.Module) -> TokenReduction | None:
    """The reduction a model is patched with, or None for a dense model."""
    blocks = getattr(model, "blocks", None)
    first = blocks[0] if isinstance(blocks, nn.Sequential) and len(blocks) else None
    return first.token_reduction if isinstance(first, ReducingBlock) else None


def patch(model: nn.Module, reduction: TokenReduction, copy_model: bool = False) -> nn.Module:
    """The model (or a copy sharing its parameters and buffers) running `reduction`;
    a model already patched takes the new reduction instead of its old one."""
    check_plain_vit(model)
    if copy_model:
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        model = copy.deepcopy(model, memo=shared)
    for index, block in enumerate(model.blocks):
        if type(block) is Block:
            block.__class__ = ReducingBlock
        block.token_reduction, block.block_index = reduction, index
    return model


def remove_token_reduction(model: nn.Module) -> nn.Module:
    """The dense model back (its blocks timm's Block again)."""
    for block in getattr(model, "blocks", ()):
        if isinstance(block, ReducingBlock):
            block.__class__ = Block
            del block.token_reduction, block.block_index
    return model


@contextlib.contextmanager
def reduced(model: nn.Module, reduction: TokenReduction, trace: Sequence[int] = ()) -> Iterator[TokenReduction]:
    """Inside the block the model runs `reduction` (recording the maps of the
    1-based blocks `trace` in ``reduction.traced`` at each forward); after it the
    model is as it was, patched with whatever it had before or dense."""
    before = token_reduction_of(model)
    reduction.trace_layers = tuple(trace)
    patch(model, reduction)
    try:
        yield reduction
    finally:
        reduction.trace_layers = ()
        if before is None:
            remove_token_reduction(model)
        else:
            patch(model, before)
