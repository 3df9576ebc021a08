"""Drawing: heatmap, granularity, mask-contour, detection and semantic overlays
(RGB uint8 arrays in, RGB uint8 arrays out), maps on the squashed input shown at
their image's own size (``unsquash``; ``data.geometry.map_to_image`` carries a map
back through any preprocessing) and drawn with their own range (``map_panel``;
``ranges``: units, nominal scales, what counts as flat), and the palettes."""
from dge_explain.data.annotations import Instance
from dge_explain.data.classes import ADE20K_CLASSES, COCO_CLASSES, VOC_CLASSES

from .detection import draw_instances
from .overlays import (MapPanel, annotate, draw_granularity, flat_overlay, heatmap_overlay, map_panel,
                       mask_contours, unsquash)
from .palettes import distinct_colors, voc_palette
from .ranges import NEGLIGIBLE, MapScale, flat_text, map_scale, negligible, range_text, value_range
from .semantic import semantic_overlay

__all__ = ["ADE20K_CLASSES", "COCO_CLASSES", "Instance", "MapPanel", "MapScale", "NEGLIGIBLE", "VOC_CLASSES",
           "annotate", "distinct_colors", "draw_granularity", "draw_instances", "flat_overlay", "flat_text", "heatmap_overlay",
           "map_panel", "map_scale", "mask_contours", "negligible", "range_text",
           "semantic_overlay", "unsquash", "value_range", "voc_palette"]
