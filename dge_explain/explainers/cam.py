"""The pytorch-grad-cam family through its own classes, for dense and DGE models
of the DeiT/ViT and PVT families.

Target layer: the output of the second-to-last block (= the input of the last
block): ``blocks[-2]`` for a ViT, ``block4[-2]`` for PVT.  There the spatial tokens
still reach the class token through the last block's attention, so they receive
gradients (a classifier reads only the cls token, whose final output no spatial
token influences after the last block), and the tensor is the residual stream of
all tokens in dense and DGE models alike.  pytorch-grad-cam's ViT recipe targets
``blocks[-1].norm1`` instead; in a DGE block that LayerNorm runs twice (on all
tokens for the keys, on the packed queries for the queries), so the recipe's
reshape sees [L, C] packed queries: pass ``token_grid(model)`` and ``blocks[-2]``.

Gradient methods back-propagate from the logits to the target layer only (its
output is made a leaf and the parameters are frozen for the call: the same maps,
no parameter gradients, most of a backward saved).  AblationCAM runs, for its
ablation passes, only the layers from the target on (the blocks before it are
bypassed: the ablation layer replaces their result with the stored activations
anyway).  The CAM target is the predicted class unless labels are given.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
from torch import nn

from dge_explain.models.families import adapter_for, check_image_size

from .base import Explainer

# "class": the pytorch-grad-cam class; "passes": "gradients" (one shared forward and
# backward), "forward" (one forward), "per-channel" (a pass per channel: costly)
METHODS = {
    "gradcam": {"title": "GradCAM", "units": "CAM", "scale": 1.0, "class": "GradCAM", "passes": "gradients",
                "help": "GradCAM (Selvaraju et al.): channel weights = mean gradient"},
    "gradcam++": {"title": "GradCAM++", "units": "CAM", "scale": 1.0, "class": "GradCAMPlusPlus", "passes": "gradients",
                  "help": "GradCAM++ (Chattopadhay et al.)"},
    "xgradcam": {"title": "XGradCAM", "units": "CAM", "scale": 1.0, "class": "XGradCAM", "passes": "gradients", "help": "XGradCAM (Fu et al.)"},
    "layercam": {"title": "LayerCAM", "units": "CAM", "scale": 1.0, "class": "LayerCAM", "passes": "gradients",
                 "help": "LayerCAM (Jiang et al.)"},
    "hirescam": {"title": "HiResCAM", "units": "CAM", "scale": 1.0, "class": "HiResCAM", "passes": "gradients",
                 "help": "HiResCAM (Draelos and Carin): gradient times activation, element-wise"},
    "gradcam-elementwise": {"title": "GradCAM (element-wise)", "units": "CAM", "scale": 1.0, "class": "GradCAMElementWise", "passes": "gradients",
                            "help": "GradCAM with element-wise ReLU (pytorch-grad-cam's GradCAMElementWise)"},
    "eigencam": {"title": "EigenCAM", "units": "CAM", "scale": 1.0, "class": "EigenCAM", "passes": "forward", "class_specific": False,
                 "help": "EigenCAM (Muhammad and Yeasin): first principal component (sign fixed as "
                         "Seg-Eigen-CAM), no gradient"},
    "eigengradcam": {"title": "EigenGradCAM", "units": "CAM", "scale": 1.0, "class": "EigenGradCAM", "passes": "gradients",
                     "help": "EigenGradCAM: first principal component of gradient times activation (sign "
                             "fixed as Seg-Eigen-CAM)"},
    "scorecam": {"title": "ScoreCAM", "units": "CAM", "scale": 1.0, "class": "ScoreCAM", "passes": "per-channel",
                 "help": "ScoreCAM (Wang et al.): one forward per channel of the target layer"},
    "ablationcam": {"title": "AblationCAM", "units": "CAM", "scale": 1.0, "class": "AblationCAM", "passes": "per-channel",
                    "help": "AblationCAM (Desai and Ramaswamy): one ablated forward per channel"},
}


# The eigen methods project onto the first principal component, whose sign an SVD
# leaves arbitrary: float rounding (e.g. another batch split) could flip a map.  Their
# sign is fixed as Seg-Eigen-CAM's Eq. 13 does (pytorch-grad-cam's own
# get_2d_projection_with_sign_correction: flipped when |min| > |max|).
EIGEN_INPUT = {"eigencam": lambda activations, grads: activations,
               "eigengradcam": lambda activations, grads: grads * activations}


def _cam_class(method: str):
    import pytorch_grad_cam  # imported on first use: it takes seconds

    base = getattr(pytorch_grad_cam, METHODS[method]["class"])
    if method not in EIGEN_INPUT:
        return base
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    class SignCorrected(base):
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            return get_2d_projection_with_sign_correction(EIGEN_INPUT[method](activations, grads))

    return SignCorrected


def cam_target_layer(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(module whose output the CAMs read, the blocks before it)."""
    blocks, earlier, _ = adapter_for(model).cam_layers(model)
    if len(blocks) < 2:
        raise ValueError("the CAMs need at least two blocks in the last stage")
    return blocks[-2], earlier + blocks[:-2]


class _InputRecorder:
    """A token_grid's forward pre-hook on its model: notes each input's size (and
    refuses one the model cannot take, before the forward).  Copies and pickles of
    the model carry an inert one (the token_grid belongs to the original)."""

    def __init__(self, grid: "token_grid"):
        self.grid = weakref.ref(grid)

    def __getstate__(self):
        return {"grid": None}

    def __call__(self, module, args, kwargs):
        grid = self.grid() if self.grid is not None else None
        images = args[0] if args else next(iter(kwargs.values()), None)
        if grid is not None and isinstance(images, torch.Tensor) and images.dim() == 4:
            check_image_size(module, images.shape[-2:])
            grid.image_hw = tuple(images.shape[-2:])


class token_grid:
    """reshape_transform for pytorch-grad-cam: tokens [B, N, C] of the last stage ->
    [B, C, H, W] on its token grid (extra tokens dropped).  The grid follows the
    input of the model's latest forward, which a pre-hook records (and refuses
    before the forward when the model cannot take its size): square or not, the
    model's own forward is the only place that knows it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapter = adapter_for(model)
        self.image_hw: tuple[int, int] | None = None
        handle = model.register_forward_pre_hook(_InputRecorder(self), with_kwargs=True)
        # the model outlives this object: its hook goes with it
        weakref.finalize(self, handle.remove)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"the CAM target layer gave a {tuple(tokens.shape)} tensor, not tokens [B, N, C]: "
                             "in a DGE block, LayerNorms and attention see packed queries [L, C]; target a "
                             "block output such as model.blocks[-2]")
        if self.image_hw is None:
            raise ValueError("token_grid(model) reads the token grid from the images of the model's forward and "
                             "has seen none: create it before calling the CAM (or the model) on images "
                             "[B, 3, H, W]")
        extra, (height, width), stride = self.adapter.last_tokens(self.model, self.image_hw)
        if tokens.shape[1] != extra + height * width:
            raise ValueError(
                f"the CAM target layer gave {tokens.shape[1]} tokens; at input {self.image_hw[0]}x"
                f"{self.image_hw[1]} the last stage has {extra} extra + {height}x{width} tokens (stride {stride}): "
                "target a block of the last stage, e.g. model.blocks[-2] (PVT: model.block4[-2])")
        spatial = tokens[:, extra:]
        return spatial.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


class _Passthrough(nn.Module):
    def forward(self, x, *args):
        return x


@contextlib.contextmanager
def _bypassed(modules: list[nn.Module]):
    """Inside, each module returns its first input (their results are not needed)."""
    for module in modules:
        module.forward = _Passthrough().forward
    try:
        yield
    finally:
        for module in modules:
            del module.forward


@contextlib.contextmanager
def _quiet():
    """pytorch-grad-cam's ScoreCAM and AblationCAM draw a progress bar per image."""
    import pytorch_grad_cam.ablation_cam as ablation
    import pytorch_grad_cam.score_cam as score

    class Silent:
        @staticmethod
        def tqdm(iterable, *args, **kwargs):
            return iterable

    saved = ablation.tqdm, score.tqdm
    ablation.tqdm = score.tqdm = Silent
    try:
        yield
    finally:
        ablation.tqdm, score.tqdm = saved


def _ablation_layer(before: list[nn.Module], stack: contextlib.ExitStack):
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    class TokenAblation(AblationLayerVit):
        """pytorch-grad-cam's token ablation, called like a block (x, grid); from its
        first ablation pass on, the blocks before the target are bypassed.  The
        ablation itself is theirs, vectorised: channel indices[i] of copy i is set to
        0 if the activations' minimum is 0, else to the running minimum - 1e7, which
        their loop lowers by 1e7 (in float32) for each copy in turn."""

        def __call__(self, x, *args):
            output = self.activations.transpose(1, len(self.activations.shape) - 1)
            copies = output.shape[0]
            low = torch.min(output)
            if low == 0:
                values = torch.zeros(copies, dtype=output.dtype, device=output.device)
            else:
                values = []
                for _ in range(copies):
                    low = low - 1e7
                    values.append(low)
                values = torch.stack(values)
            channels = torch.as_tensor(self.indices[:copies], dtype=torch.long, device=output.device)
            output[torch.arange(copies, device=output.device), channels, :] = values[:, None]
            return output.transpose(len(output.shape) - 1, 1)

        def set_next_batch(self, *args, **kwargs):
            if not getattr(self, "bypassing", False):
                stack.enter_context(_bypassed(before))
                self.bypassing = True
            return super().set_next_batch(*args, **kwargs)

    return TokenAblation()


# ScoreCAM builds [images, channels, 3, H, W] masked copies of its input at once:
# it is given a few images at a time, and scores the copies in larger batches.
SCORECAM_IMAGES, SCORECAM_BATCH = 2, 64


class CAMMaps(Explainer):
    """Maps of one pytorch-grad-cam method, named as the method."""

    def __init__(self, model: nn.Module, method: str = "gradcam"):
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
        self.model, self.method = model, method
        self.uses_gradients = METHODS[method]["passes"] == "gradients"
        self.class_specific = METHODS[method].get("class_specific", True)
        # the gradient methods weigh the same activations and gradients: one pass for all
        self.shared_pass = "gradient-cam" if self.uses_gradients else None
        self.layer, self.before = cam_target_layer(model)
        self.reshape = token_grid(model)

    def names(self) -> list[str]:
        return [self.method]

    def describe(self) -> dict[str, dict]:
        layer = next(name for name, module in self.model.named_modules() if module is self.layer)
        return {self.method: {"method": self.method, "target_layer": layer}}

    @contextlib.contextmanager
    def _prepared(self) -> Iterator[contextlib.ExitStack]:
        """Eval mode, parameters frozen, and the graph cut at the target layer: its
        output becomes a leaf, before pytorch-grad-cam's hook records it."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        was_training = self.model.training
        self.model.eval()
        with contextlib.ExitStack() as stack:
            for parameter in trainable:
                parameter.requires_grad_(False)
            stack.callback(lambda: [p.requires_grad_(True) for p in trainable])
            stack.callback(lambda: self.model.train(was_training))
            cut = self.layer.register_forward_hook(lambda module, args, out: out.detach().requires_grad_(True))
            stack.callback(cut.remove)
            stack.enter_context(_quiet())
            yield stack

    def _cam(self, stack: contextlib.ExitStack):
        extra = {"ablation_layer": _ablation_layer(self.before, stack)} if self.method == "ablationcam" else {}
        cam = _cam_class(self.method)(model=self.model, target_layers=[self.layer],
                                      reshape_transform=self.reshape, **extra)
        if self.method == "scorecam":
            cam.batch_size = SCORECAM_BATCH
        stack.callback(cam.activations_and_grads.release)
        return cam

    def __call__(self, images: torch.Tensor, ids=None, labels=None) -> dict[str, torch.Tensor]:
        if self.method == "scorecam" and len(images) > SCORECAM_IMAGES:
            parts = [self(images[i:i + SCORECAM_IMAGES], None,
                          None if labels is None else labels[i:i + SCORECAM_IMAGES])[self.method]
                     for i in range(0, len(images), SCORECAM_IMAGES)]
            return {self.method: torch.cat(parts)}
        return self.compute_together([self], images, labels)

    @classmethod
    def compute_together(cls, explainers, images, labels=None):
        return shared_pass(explainers, images, labels)


def shared_pass(cams: list[CAMMaps], images: torch.Tensor, labels=None) -> dict[str, torch.Tensor]:
    """The maps of several CAM methods on the same model and target layer from one
    pytorch-grad-cam pass: the first method's forward (and backward) records the
    activations and gradients; every other method's own class computes its map from
    them (the gradient methods differ only in how they weigh the same tensors)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    first = cams[0]
    targets = None if labels is None else [ClassifierOutputTarget(int(c)) for c in labels]
    with first._prepared() as stack:
        objects = [cam._cam(stack) for cam in cams]
        for other in objects[1:]:
            other.activations_and_grads.release()         # only the first one's hooks record
        with torch.enable_grad():
            maps = {first.method: objects[0](input_tensor=images, targets=targets)}
        if targets is None:
            targets = [ClassifierOutputTarget(int(c)) for c in objects[0].outputs.argmax(1)]
        for cam, other in zip(cams[1:], objects[1:]):
            other.activations_and_grads = objects[0].activations_and_grads
            maps[cam.method] = other.aggregate_multi_layers(other.compute_cam_per_layer(images, targets, False))
    return {method: torch.from_numpy(values).to(images.device) for method, values in maps.items()}


def build(model: nn.Module, requests: dict[str, str], seed: int) -> list:
    for method, argument in requests.items():
        if argument:
            raise ValueError(f"method '{method}' takes no argument, got '{method}:{argument}'")
    return [CAMMaps(model, method) for method in requests]
