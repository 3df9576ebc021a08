"""``dge-explain explain``: every method's maps of image files that have no masks,
written per image as overlays at the photo's own size, a grid of all methods and
the raw maps, with an index of every map's value range.

Layout of OUT (rerunning resumes, as ``evaluate`` does, through the same loop):

    OUT/index.json, index.md      every image: its size and each map's range (flat ones marked)
    OUT/maps/<image>/<method>.png the map over the photo at the photo's size, its range printed on it
    OUT/maps/<image>/grid.png     the photo and every method side by side, each with its range
    OUT/maps/<image>/maps.npz     the maps as computed, on the model's S x S input, in their own
                                  precision, with image_size (W, H): carry one back to the
                                  photo with dge_explain.data.geometry.map_to_image
    OUT/run.json, records/        the run's settings and one record per image (resume)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dge_explain.console import say
from dge_explain.data.geometry import map_to_image
from dge_explain.data.images import ImageFiles
from dge_explain.data.preprocess import Preprocessing
from dge_explain.evaluation.loop import run_resumable
from dge_explain.evaluation.report import method_title, ordered_names
from dge_explain.evaluation.runs import RunFolder, write_atomic
from dge_explain.explainers import batch_maps, describe_maps


def slugs(keys: list[str]) -> list[str]:
    """A folder name per image key, unique within the listing (keys are paths)."""
    names = [re.sub(r"[^\w.+-]+", "_", key).strip("._") or "image" for key in keys]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}-{count + 1}")
    return unique


def _write_image(folder: Path, photo: np.ndarray, maps: dict[str, torch.Tensor], preprocessing: Preprocessing,
                 dpi: int) -> dict[str, dict]:
    """The files of one image; returns each map's range, units and flatness."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from dge_explain.viz.figures import map_grid, save
    from dge_explain.viz.overlays import annotate, map_panel
    from dge_explain.viz.ranges import map_scale, value_range

    folder.mkdir(parents=True, exist_ok=True)
    size = (photo.shape[1], photo.shape[0])
    carried = {name: map_to_image(values.numpy(), size, preprocessing) for name, values in maps.items()}
    described = {}
    for name, values in maps.items():
        scale = map_scale(name)
        # ranges and flatness are the map's as computed (the one carried back is interpolated)
        panel = map_panel(photo, values, scale, shown=carried[name])
        Image.fromarray(annotate(panel.pixels, [method_title(name), panel.range, panel.flat])).save(
            folder / f"{name}.png")
        low, high = value_range(values)
        described[name] = {"min": low, "max": high, "units": scale.units, "flat": bool(panel.flat),
                           "overlay": f"{folder.name}/{name}.png"}
    figure = map_grid([photo], None, {name: [values] for name, values in maps.items()},
                      shown={name: [carried[name]] for name in maps})
    save(figure, folder / "grid", dpi=dpi, formats=("png",))
    plt.close(figure)
    np.savez(folder / "maps.npz", image_size=np.array(size), **{name: m.numpy() for name, m in maps.items()})
    return described


def write_index(out: Path, ordered: list[dict], info: dict, limit: int | None, failed: list[dict],
                write: bool = True) -> dict:
    names = ordered_names(ordered[0]["maps"])
    index = {"run": info, "limit": limit, "images": ordered, "failed": failed}
    if not write:
        return index
    write_atomic(out / "index.json", json.dumps(index, indent=2))
    lines = ["| image | size | " + " | ".join(method_title(n) for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for record in ordered:
        cells = []
        for name in names:
            entry = record["maps"][name]
            text = f"{entry['units']} {entry['min']:.3g} … {entry['max']:.3g}"
            cells.append(f"[{'flat ' if entry['flat'] else ''}{text}](maps/{entry['overlay']})")
        lines.append(f"| {record['key']} | {record['size'][0]}x{record['size'][1]} | " + " | ".join(cells) + " |")
    write_atomic(out / "index.md", "\n".join(lines) + "\n")
    return index


def explain_images(model: nn.Module, files: list[Path], explainers: list, out, preprocessing: Preprocessing,
                   limit: int | None = None, batch_size: int = 8, device="cpu", workers: int = 2,
                   info: dict | None = None, dpi: int = 100, progress: bool = True) -> dict | None:
    """Maps, overlays and the index of every image (resumable, rank-aware)."""
    out = Path(out)
    dataset = ImageFiles(files, preprocessing)
    folders = dict(zip(dataset.keys(), slugs(dataset.keys())))
    model = model.to(device).eval()
    settings = {"images": [str(Path(p).resolve()) for p in files], "maps": describe_maps(explainers),
                "preprocessing": preprocessing.as_dict(), **(info or {})}

    def explain_batch(batch: dict) -> list[dict]:
        maps = batch_maps(explainers, batch["image"].to(device), batch["key"])
        bodies = []
        for j, key in enumerate(batch["key"]):
            photo = np.asarray(preprocessing.reader.rgb(dataset.files[int(batch["index"][j])]))
            described = _write_image(out / "maps" / folders[key], photo, {n: m[j] for n, m in maps.items()},
                                     preprocessing, dpi)
            bodies.append({"size": batch["size"][j].tolist(), "folder": f"maps/{folders[key]}",
                           "maps": described})
        return bodies

    index = run_resumable(RunFolder(out, "explain"), dataset, settings, limit, explain_batch, write_index,
                          batch_size, workers, progress)
    if index is not None:
        say(f"{len(index['images'])} images explained: {out / 'index.md'}")
    return index
