"""Drawing: heatmap, granularity, mask-contour, detection and semantic overlays
(RGB uint8 arrays in, RGB uint8 arrays out), maps carried back to their image's
own size (``map_to_image``) and drawn with their own range (``map_panel``;
``ranges``: units, nominal scales, what counts as flat), and the palettes."""
from .detection import Instance, draw_instances
from .overlays import (MapPanel, draw_granularity, flat_overlay, heatmap_overlay, map_panel, map_to_image,
                       mask_contours)
from .palettes import ADE20K_CLASSES, COCO_CLASSES, VOC_CLASSES, distinct_colors, voc_palette
from .ranges import NEGLIGIBLE, MapScale, flat_text, map_scale, negligible, range_text, value_range
from .semantic import semantic_overlay

__all__ = ["ADE20K_CLASSES", "COCO_CLASSES", "Instance", "MapPanel", "MapScale", "NEGLIGIBLE", "VOC_CLASSES",
           "distinct_colors", "draw_granularity", "draw_instances", "flat_overlay", "flat_text", "heatmap_overlay",
           "map_panel", "map_scale", "map_to_image", "mask_contours", "negligible", "range_text",
           "semantic_overlay", "value_range", "voc_palette"]
