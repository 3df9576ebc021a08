"""The interface of a backbone family's adapter."""
from __future__ import annotations

from torch import nn


class BackboneAdapter:
    """What the package needs to know about one backbone family's architecture.
    Complexity counting, the explainers and checkpoint loading ask the model's
    adapter (``adapter_for``) instead of testing the model's class."""

    family = ""
    # None where rollout and relevance are defined, else why they are not
    token_attention_refusal: str | None = None
    # None where every attention explainer is defined (attention probabilities over
    # tokens exist), else why none is
    attention_refusal: str | None = None

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """Every transformer block, in forward order."""
        raise NotImplementedError

    def block_inputs(self, model: nn.Module, image_hw: tuple[int, int]) -> list[tuple[nn.Module, int, int]]:
        """(block, tokens per image incl. extra, token-grid cells) of every block at image_hw."""
        raise NotImplementedError

    def image_size(self, model: nn.Module, first_grid: tuple[int, int]) -> tuple[int, int]:
        """The image size whose first block sees a token grid of first_grid."""
        raise NotImplementedError

    def last_tokens(self, model: nn.Module, image_hw: tuple[int, int]) -> tuple[int, tuple[int, int], int]:
        """(extra tokens before the spatial ones, token grid, stride in pixels) of the
        tokens the last block attends over."""
        raise NotImplementedError

    def stem_macs(self, model: nn.Module, pixels: float, terms: str) -> float:
        """MACs of the patch embedding(s) for `pixels` input pixels ("all" terms, or
        "matmul" only)."""
        raise NotImplementedError

    def attention_macs(self, attn: nn.Module, dim: int, n_in, n_q, original: bool):
        """(matrix-product MACs, other MACs) of one block's attention for n_in
        inputs and n_q queries (numbers or tensors); `original`: the authors'
        accounting.  Token attention with h heads: q, proj 2 Nq C^2; kv 2 Nin C^2;
        QK^T and AV 2 Nq Nin C; softmax 3 Nq Nin h."""
        matmul = 2 * n_q * dim * dim + 2 * n_in * dim * dim + 2 * n_q * n_in * dim
        return matmul, 3 * n_q * n_in * attn.num_heads

    def cam_layers(self, model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], int]:
        """(blocks of the last stage, the blocks before that stage, token stride in
        pixels of the last stage): the CAMs read the second-to-last block."""
        raise NotImplementedError

    def convert_checkpoint(self, state: dict, model: nn.Module, report) -> None:
        """Adapt a state dict in place to the model (e.g. resample position
        embeddings), noting each change in report.converted."""
