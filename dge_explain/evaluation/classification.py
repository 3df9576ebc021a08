"""Classification accuracy and complexity of a DGE model next to its dense
teacher on labelled images: top-1/top-5, the complexity ratio (mean dynamic /
mean static MACs over all images) and the share of finest regions per layer."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dge_explain.complexity import dge_complexity
from dge_explain.data import LabelledImageFolder, Preprocessing
from dge_explain.models import dge_modules


@dataclass
class ClassificationResult:
    images: int
    top1: float
    top5: float
    dense_top1: float | None
    dense_top5: float | None
    ratio: float | None            # mean dynamic / mean static MACs (None: a dense model)
    dynamic_gmacs: float | None
    static_gmacs: float | None
    fine_per_layer: list[float]    # share of regions at the finest option, per DGE block
    preprocessing: dict            # what the images were resized, cropped and normalised with

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate_classification(model: nn.Module, images: str, dense: nn.Module | None = None,
                            batch_size: int = 50, device="cpu", workers: int = 2,
                            progress: bool = True, preprocessing: Preprocessing | None = None
                            ) -> ClassificationResult:
    """images: a folder of synset-named files (``folder:even`` / ``:odd`` for a half);
    preprocessing: default the model's own (timm data config); the dense model, if
    given, sees the same images."""
    preprocessing = preprocessing or Preprocessing.of(model)
    data = LabelledImageFolder(images, preprocessing.classification_transform())
    measured = bool(dge_modules(model))  # a dense model has no gates to count
    model.eval().to(device)
    if dense is not None:
        dense.eval().to(device)
    counts = {"top1": 0, "top5": 0, "dense_top1": 0, "dense_top5": 0}
    static = dynamic = 0.0
    fine = None
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
    for batch, labels in tqdm(loader, desc="classifying", disable=not progress):
        batch, labels = batch.to(device), labels.to(device)
        for prefix, net in (("", model), ("dense_", dense)):
            if net is None:
                continue
            logits = net(batch)
            top5 = logits.topk(min(5, logits.shape[1])).indices
            counts[prefix + "top1"] += int((top5[:, 0] == labels).sum())
            counts[prefix + "top5"] += int((top5 == labels[:, None]).any(1).sum())
            if net is model and measured:
                result = dge_complexity(model)
                static += float(result.static.sum())
                dynamic += float(result.dynamic.sum())
                layer = torch.stack([f.sum() for f in result.fine_fraction])
                fine = layer if fine is None else fine + layer
    n = len(data)
    return ClassificationResult(
        images=n, top1=counts["top1"] / n, top5=counts["top5"] / n,
        dense_top1=counts["dense_top1"] / n if dense is not None else None,
        dense_top5=counts["dense_top5"] / n if dense is not None else None,
        ratio=dynamic / static if measured else None,
        dynamic_gmacs=dynamic / n / 1e9 if measured else None,
        static_gmacs=static / n / 1e9 if measured else None,
        fine_per_layer=[float(v) / n for v in fine] if measured else [],
        preprocessing=preprocessing.as_dict())
