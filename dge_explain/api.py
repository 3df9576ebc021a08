"""The Python front door: ``load_model``, ``explain`` and ``score`` (re-exported as
``dge_explain.load_model`` and so on), on the same machinery as the command line.

    model = dge_explain.load_model("deit_dge_s12_tiny_patch16_224.distilled")
    maps = dge_explain.explain(model, ["cat.jpg", "dog.png"], methods=("gating:8", "gradcam"))
    scores = dge_explain.score(maps, ["cat_mask.png", "dog_mask.png"])
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from dge_explain import zoo
from dge_explain.console import say
from dge_explain.models import load_checkpoint
from dge_explain.models.checkpoint import checkpoint_architecture


def load_model(name_or_file: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
               weights: str | None = None, trained: str | None = None, home: str | None = None,
               device="cpu", random_weights: bool = False, fresh_routers: bool = False,
               partial: bool = False) -> nn.Module:
    """A model in eval mode, from any of:

    * a shipped model's name or alias (``dge_explain.zoo.MODELS``), e.g.
      ``"deit_dge_s12_tiny_patch16_224.distilled"``; ``weights``: its dense teacher
      (default: the file under ``$DGE_EXPLAIN_HOME``, or "timm" to download),
      ``trained``: a ``trained.safetensors`` of ``dge-explain train`` instead of the
      shipped parameters;
    * any timm model name (dge-explain registers its DGE models with timm) with a
      ``checkpoint`` (safetensors, or a torch file read with ``weights_only``): timm's
      layout, the original DGE implementation's ({'model', 'args', ...}), or a
      DDP-saved one; a dense checkpoint into a DGE model needs ``fresh_routers=True``
      (the routers keep their initialisation: train them before reading maps);
      ``random_weights=True`` runs the name without a checkpoint on purpose;
    * a checkpoint file alone, when it names its architecture (the original
      implementation's ``args.model``).

    Missing or unexpected checkpoint keys are an error naming them, unless
    ``partial=True`` (the matching keys are loaded).
    """
    name = os.fspath(name_or_file)
    checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
    zoo.check_choice(name, checkpoint, weights, trained, random_weights, home, fresh_routers, partial)
    if zoo.shipped_name(name):
        from dge_explain.zoo.build import build_shipped

        return build_shipped(name, weights=weights, home=home, trained=trained).to(device)
    if zoo.looks_like_file(name):
        checkpoint, name = name, checkpoint_architecture(name)
    if not timm.is_model(name.partition(".")[0]):
        raise ValueError(f"unknown model '{name}': neither shipped ({', '.join(zoo.MODELS)}) nor registered "
                         "with timm")
    model = timm.create_model(name)
    if checkpoint:
        report = load_checkpoint(model, Path(checkpoint), partial=partial, fresh_routers=fresh_routers)
        if report.initialised:
            say(f"note: {len(report.initialised)} router parameters of {name} start untrained (fresh routers): "
                "its gating maps mean nothing until trained (dge-explain train)")
    return model.eval().to(device)


class ImageMaps(Mapping):
    """The maps of one image, by method name, as numpy arrays at the image's own size
    (carried back through the preprocessing's resize and crop: NaN where the crop
    left the photo unseen) or, with ``at_input_size``, at the model's input size.

    ``input_maps``: the maps as computed, torch tensors [S, S] in their own
    precision (what ``score`` scores); ``source``: the path or a description;
    ``image_size``: (W, H) of the photo (None for a preprocessed tensor)."""

    def __init__(self, source: str, image_size: tuple[int, int] | None, input_maps: dict,
                 preprocessing, at_input_size: bool):
        self.source, self.image_size, self.input_maps = source, image_size, input_maps
        self.preprocessing, self.at_input_size = preprocessing, at_input_size or image_size is None
        self._carried: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if self.at_input_size:
            return self.input_maps[name].numpy()
        if name not in self._carried:
            from dge_explain.data.geometry import map_to_image

            self._carried[name] = map_to_image(self.input_maps[name].numpy(), self.image_size, self.preprocessing)
        return self._carried[name]

    def __iter__(self):
        return iter(self.input_maps)

    def __len__(self) -> int:
        return len(self.input_maps)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Each map's (min, max) in its own units, as computed."""
        return {name: (float(m.min()), float(m.max())) for name, m in self.input_maps.items()}

    def __repr__(self) -> str:
        size = "x".join(map(str, self.image_size)) if self.image_size else "input"
        return f"ImageMaps({self.source!r}, {size}, {list(self.input_maps)})"


def _as_inputs(images, preprocessing) -> tuple[torch.Tensor, list[str], list[str], list[tuple[int, int] | None]]:
    """(normalised batch [N, 3, S, S], sources, keys, image sizes) of paths, PIL
    images, arrays [H, W, 3] (uint8) or a preprocessed tensor [3, S, S] / [N, 3, S, S];
    a file's key (what seeded maps depend on) is its name, as in `evaluate`."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        batch = images[None] if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"a preprocessed tensor is [3, H, W] or [N, 3, H, W], got {tuple(images.shape)}")
        sources = [f"tensor[{i}]" for i in range(len(batch))]
        return batch.float(), sources, sources, [None] * len(batch)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    tensors, sources, keys, sizes = [], [], [], []
    for index, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            from dge_explain.data.folders import printable

            source, key, image = printable(image), printable(Path(image).name), preprocessing.reader.rgb(image)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {index}: an array must be RGB uint8 [H, W, 3], got {image.dtype} "
                                 f"{image.shape}")
            source, image = f"array[{index}]", Image.fromarray(image)
            key = source
        elif isinstance(image, Image.Image):
            source, image = f"image[{index}]", image.convert("RGB")
            key = source
        else:
            raise ValueError(f"image {index}: expected a path, a PIL image, an RGB uint8 array or a tensor, "
                             f"got {type(image).__name__}")
        tensors.append(preprocessing.model_input(image))
        sources.append(source)
        keys.append(key)
        sizes.append(image.size)
    return torch.stack(tensors), sources, keys, sizes


def explain(model: nn.Module, images, methods=("gating",), *, labels=None, at_input_size: bool = False,
            crop: bool = False, batch_size: int = 16, device=None, seed: int = 0,
            preprocessing=None) -> list[ImageMaps]:
    """Every method's maps of each image, on the machinery of ``dge-explain``.

    images: a path, PIL image, RGB uint8 array [H, W, 3] or a list of them, or a
    preprocessed tensor [3, S, S] / [N, 3, S, S]. methods: names as on the command
    line (``dge-explain methods``), e.g. ("gating:8", "gradcam"). labels: classes
    to explain (default: the predicted ones). The model's own preprocessing: the
    whole image resized to its input size (the segmentation protocol's view), or
    with ``crop`` its classification view (resize and centre crop); maps come back
    at each image's own size unless ``at_input_size``."""
    from dge_explain.data import Preprocessing
    from dge_explain.explainers import batch_maps, build_explainers

    preprocessing = preprocessing or (Preprocessing.of(model) if crop else Preprocessing.of(model).for_segmentation())
    device = torch.device(device) if device is not None else next(model.parameters()).device
    explainers = build_explainers(model, methods, seed)
    inputs, sources, keys, sizes = _as_inputs(images, preprocessing)
    if labels is not None and len(labels) != len(inputs):
        raise ValueError(f"{len(labels)} labels for {len(inputs)} images")
    model = model.eval()
    results = []
    for start in range(0, len(inputs), batch_size):
        chunk = slice(start, start + batch_size)
        maps = batch_maps(explainers, inputs[chunk].to(device), keys[chunk],
                          None if labels is None else torch.as_tensor(labels[chunk]))
        for j, (source, size) in enumerate(zip(sources[chunk], sizes[chunk])):
            results.append(ImageMaps(source, size, {name: m[j] for name, m in maps.items()}, preprocessing,
                                     at_input_size))
    return results


def _mask_on_input(mask, image_maps, preprocessing) -> torch.Tensor:
    """A mask (path, PIL image, array) as the bool mask the protocol scores against,
    on the grid of `image_maps`' input maps."""
    from PIL import Image

    from dge_explain.data.segmentation import binarise

    if isinstance(mask, (str, os.PathLike)):
        mask = preprocessing.reader.read(mask, "mask")
    grey = np.asarray(mask.convert("L")) if isinstance(mask, Image.Image) else np.asarray(mask)
    if grey.dtype == bool:
        grey = grey.astype(np.uint8)
    foreground, _ = binarise(grey, preprocessing.mask_threshold)
    if image_maps.image_size is not None and foreground.shape != image_maps.image_size[::-1]:
        raise ValueError(f"the mask of {image_maps.source} is {foreground.shape[1]}x{foreground.shape[0]} but "
                         f"the image is {image_maps.image_size[0]}x{image_maps.image_size[1]}")
    return torch.from_numpy(preprocessing.mask_on_input(foreground))


def score(maps, masks) -> dict[str, dict[str, float]]:
    """The protocol's pixel accuracy, mAP and mIoU (percent) of each method over
    the images: ``maps`` as ``explain`` returns them, ``masks`` one per image (a
    path, PIL image or array; binary, or cut at the preprocessing's mask threshold).
    As Chefer et al.: each map scored at the model's input size against its mask
    resized there with nearest-neighbour sampling."""
    from dge_explain.evaluation.metrics import aggregate, score_maps

    maps = [maps] if isinstance(maps, ImageMaps) else list(maps)
    masks = [masks] if isinstance(masks, (str, os.PathLike)) else list(masks)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} images' maps but {len(masks)} masks")
    if not maps:
        raise ValueError("no maps to score")
    names = list(maps[0])
    per_method: dict[str, list] = {name: [] for name in names}
    for image_maps, mask in zip(maps, masks):
        truth = _mask_on_input(mask, image_maps, image_maps.preprocessing)
        for name in names:
            values = image_maps.input_maps[name]
            if values.shape != truth.shape:
                raise ValueError(f"map {name} of {image_maps.source} is {tuple(values.shape)}, its mask "
                                 f"{tuple(truth.shape)} on the input grid")
            per_method[name].append(score_maps(values[None], truth[None])[0][0])
    return {name: {**aggregate(scores).as_percent(), "images": len(scores)} for name, scores in per_method.items()}
