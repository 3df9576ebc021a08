"""The interface of a backbone family's adapter."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class SizeRule:
    """The input sizes a model takes: each side a multiple of `multiple` (the
    coarsest token stride times the DGE region size, `why` says so), after padding
    each side up to a multiple of `padded_to` where the patch embedding pads; or
    exactly `fixed` where the positional embedding cannot be resampled."""
    multiple: int
    why: str
    padded_to: int = 1
    fixed: tuple[int, int] | None = None

    def _side_fits(self, side: int) -> bool:
        return side > 0 and -(-side // self.padded_to) * self.padded_to % self.multiple == 0

    def _nearest(self, side: int) -> tuple[int, int]:
        """(the largest valid side below, the smallest above); a valid side itself."""
        if self._side_fits(side):
            return side, side
        # above: the smallest side whose padded patch grid reaches the next multiple
        cells = self.multiple // self.padded_to
        above = (-(-side // self.padded_to) + cells - 1) // cells * cells * self.padded_to - self.padded_to + 1
        return side // self.multiple * self.multiple, above

    def fits(self, height: int, width: int) -> bool:
        if self.fixed is not None:
            return (height, width) == self.fixed
        return self._side_fits(height) and self._side_fits(width)

    def problem(self, height: int, width: int) -> str | None:
        """None if height x width fits, else what the valid sizes are."""
        if self.fits(height, width):
            return None
        if self.fixed is not None:
            return (f"it takes {self.fixed[0]}x{self.fixed[1]} only (its positional embedding has a fixed size; "
                    "timm models created with dynamic_img_size=True take other sizes)")
        below, above = zip(self._nearest(height), self._nearest(width))
        choices = [f"{h}x{w}" for h, w in (below, above) if h > 0 and w > 0]
        sides = "height and width" if self.padded_to == 1 else \
            f"height and width, padded up to multiples of {self.padded_to},"
        return (f"{sides} must be multiples of {self.multiple} ({self.why}); nearest valid: "
                + " or ".join(dict.fromkeys(choices)))


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

    def size_rule(self, model: nn.Module) -> SizeRule:
        """The input sizes the model's forward takes."""
        raise NotImplementedError

    def cam_layers(self, model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], int]:
        """(blocks of the last stage, the blocks before that stage, token stride in
        pixels of the last stage): the CAMs read the second-to-last block."""
        raise NotImplementedError

    def convert_checkpoint(self, state: dict, model: nn.Module, report) -> None:
        """Adapt a state dict in place to the model (e.g. resample position
        embeddings), noting each change in report.converted."""
