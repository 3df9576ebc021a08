"""What the timm entrypoints of dge_explain.models share."""

# Keyword arguments timm.create_model passes to every entrypoint (not the models' own).
TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
