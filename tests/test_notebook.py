"""The tutorial notebook (notebooks/tutorial.ipynb) runs as written, on 2 images:
every cell executed by a Jupyter kernel (nbclient), from the notebook's folder as
Jupyter runs it, importing this checkout's dge_explain; any cell's error fails.
About 20 s on one core, so not marked slow."""
import json
import os
from pathlib import Path

import nbclient
import nbformat
import pytest

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "tutorial.ipynb"


def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    shared_file("data/ecssd/images/0001.jpg")
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    monkeypatch.setenv("DGE_NOTEBOOK_IMAGES", "2")
    monkeypatch.setenv("DGE_NOTEBOOK_OUT", str(tmp_path / "out"))
    # the kernel is a new process: this checkout first on its path, not an installed copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{NOTEBOOK.relative_to(ROOT)}: a cell failed:\n{error}")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # what it wrote: the evaluate run of 2 images and the figure
    results = tmp_path / "out" / "evaluate" / "results.json"
    assert results.is_file() and (tmp_path / "out" / "comparison.png").is_file()
    run = json.loads(results.read_text())
    assert run["images"] == 2 and sorted(run["methods"]) == ["gradcam", "layer8", "layer8-margin", "relevance"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert len(images) == 3, f"the overlay, the flat layer 12 and the figure: {len(images)} images shown"
