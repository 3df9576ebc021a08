"""DGE sparse ops: routing table, compress, decompress/restore, varlen attention,
and the dense multi-granularity training path.

The compiled extension (C++ CPU kernels, CUDA kernels when built) is the fast
path; ``dge_explain.ops.reference`` holds the pure-PyTorch oracle of each op.
"""
from ._backend import build_info, use_backend
from ._backend import active as active_backend
from .attention import varlen_attention
from .checks import region_grid
from .deformable import deformable_attention, grid_centres, patch_centres
from .multigrain import multigrain_compress, multigrain_queries, multigrain_restore
from .pooling import compress, decompress, restore
from .scoring import segmentation_scores
from .patch_table import PatchTable
from .table import route_to_patches
from .uniform import grid_means, pooled_queries, pooled_restore, region_rows, uniform_rows

__all__ = [
    "PatchTable", "active_backend", "build_info", "compress", "decompress", "deformable_attention",
    "grid_centres", "grid_means", "multigrain_compress",
    "multigrain_queries", "multigrain_restore", "patch_centres", "pooled_queries", "pooled_restore", "region_grid", "region_rows",
    "restore", "route_to_patches",
    "segmentation_scores",
    "uniform_rows", "use_backend", "varlen_attention",
]
