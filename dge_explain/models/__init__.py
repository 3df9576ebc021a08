"""DGE models: the DynamicGrainedEncoder, DeiT/ViT, PVT and DPVT with DGEs (registered
with timm), conversion from dense timm models, and strict checkpoint loading."""
from . import dpvt, pvt, vit  # noqa: F401  (registers the timm entrypoints)
from .blocks import DGEBlock, DenseBlock
from .checkpoint import CheckpointError, LoadReport, load_checkpoint, read_state_dict
from .encoder import DynamicGrainedEncoder, Routing, split_sizes_for
from .gating import dge_modules, force_gates, random_fraction
from .dpvt import DeformablePVT
from .pvt import PyramidVisionTransformer
from .router import DynamicRouter
from .vit import DGEVisionTransformer, DGEVisionTransformerDistilled, from_dense, to_dense

__all__ = [
    "CheckpointError", "DGEBlock", "DeformablePVT", "DGEVisionTransformer", "DGEVisionTransformerDistilled",
    "DenseBlock", "DynamicGrainedEncoder", "DynamicRouter", "LoadReport",
    "PyramidVisionTransformer", "Routing", "dge_modules", "force_gates", "from_dense",
    "load_checkpoint", "random_fraction", "read_state_dict", "split_sizes_for", "to_dense",
]
