"""Token-reduction peers of DGE on the same weights, training-free: ToMe (token
merging) and EViT (token reorganisation) as patches of a timm VisionTransformer,
their MACs from the token counts, and the setting that meets a MACs ratio.

    model = apply_tome(timm.create_model("deit_tiny_patch16_224", pretrained=True), r=13)
    reduction, ratio = evit_for_ratio(dense, (224, 224), 0.6); patch(dense, reduction)
"""
from .base import (PLAIN_VIT, ReducingBlock, TokenReduction, check_plain_vit, patch, plain_vit_refusal,
                   reduced, remove_token_reduction, token_reduction_of)
from .evit import EViT, apply_evit, fuse_inattentive, paper_layers
from .macs import evit_for_ratio, macs_ratio, reduced_macs, token_counts, tome_for_ratio
from .tome import ToMe, apply_tome, bipartite_merge

__all__ = ["EViT", "PLAIN_VIT", "ReducingBlock", "ToMe", "TokenReduction", "apply_evit", "apply_tome",
           "bipartite_merge", "check_plain_vit", "evit_for_ratio", "fuse_inattentive", "macs_ratio", "paper_layers",
           "patch", "plain_vit_refusal", "reduced", "reduced_macs", "remove_token_reduction", "token_counts",
           "token_reduction_of", "tome_for_ratio"]
