"""GradCAM through pytorch-grad-cam, for dense and DGE models of the DeiT/ViT and
PVT families.

Target layer: the output of the second-to-last block (= the input of the last
block): for a ViT ``blocks[-2]``, for PVT ``block4[-2]``.  There the spatial
tokens still reach the class token through the last block's attention, so they
receive gradients (a classifier reads only the cls token, whose final output
no spatial token influences after the last block).  The same layer serves
dense and DGE models alike.  A reshape transform drops the extra tokens and
folds the tokens back into their grid; the CAM target is the predicted class
unless labels are given.
"""
from __future__ import annotations

import torch
from torch import nn

from dge_explain.models import PyramidVisionTransformer


def gradcam_target_layer(model: nn.Module) -> tuple[nn.Module, int]:
    """(module whose output GradCAM reads, stride of its token grid in pixels)."""
    if isinstance(model, PyramidVisionTransformer):
        blocks, stride = list(model.block4), 32
    elif hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        blocks, stride = list(model.blocks), model.patch_embed.proj.stride[0]
    else:
        raise ValueError(f"no GradCAM target layer known for {type(model).__name__}")
    if len(blocks) < 2:
        raise ValueError("GradCAM needs at least two blocks in the last stage")
    return blocks[-2], stride


class GradCAMMaps:
    def __init__(self, model: nn.Module):
        self.model = model
        self.layer, self.stride = gradcam_target_layer(model)
        self._grid = (0, 0)

    def names(self) -> list[str]:
        return ["gradcam"]

    def describe(self) -> dict[str, dict]:
        layer = next(name for name, module in self.model.named_modules() if module is self.layer)
        return {"gradcam": {"method": "gradcam", "target_layer": layer}}

    def _fold(self, tokens: torch.Tensor) -> torch.Tensor:
        height, width = self._grid
        spatial = tokens[:, tokens.shape[1] - height * width:]
        return spatial.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)

    def __call__(self, images: torch.Tensor, ids=None, labels=None) -> dict[str, torch.Tensor]:
        from pytorch_grad_cam import GradCAM  # imported here: it takes seconds, and most runs need none
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        self._grid = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        targets = None if labels is None else [ClassifierOutputTarget(int(c)) for c in labels]
        # GradCAM needs the gradient at the target layer only: the graph starts there
        # (its output becomes a leaf) and no parameter gradient is computed, which
        # leaves the model's .grad untouched and skips most of a full backward.
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for parameter in trainable:
            parameter.requires_grad_(False)
        # Hooks live only for this call, so other explainers' forwards stay untouched;
        # the cut runs before pytorch-grad-cam's hook, which then records the leaf.
        cut = self.layer.register_forward_hook(lambda module, args, out: out.detach().requires_grad_(True))
        cam = GradCAM(model=self.model, target_layers=[self.layer], reshape_transform=self._fold)
        try:
            with torch.enable_grad():
                maps = cam(input_tensor=images, targets=targets)
        finally:
            cam.activations_and_grads.release()
            cut.remove()
            for parameter in trainable:
                parameter.requires_grad_(True)
        return {"gradcam": torch.from_numpy(maps).to(images.device)}
