"""Drawing: heatmap, granularity, mask-contour, detection and semantic overlays
(RGB uint8 arrays in, RGB uint8 arrays out), and the palettes they use."""
from .detection import draw_instances
from .overlays import draw_granularity, heatmap_overlay, mask_contours
from dge_explain.data.annotations import Instance
from dge_explain.data.classes import ADE20K_CLASSES, COCO_CLASSES, VOC_CLASSES

from .palettes import distinct_colors, voc_palette
from .semantic import semantic_overlay

__all__ = ["ADE20K_CLASSES", "COCO_CLASSES", "Instance", "VOC_CLASSES", "distinct_colors",
           "draw_granularity", "draw_instances", "heatmap_overlay", "mask_contours",
           "semantic_overlay", "voc_palette"]
