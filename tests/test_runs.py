"""Run folders keep their promises: outputs are whole or rebuilt from the records,
a finished run in a folder that cannot be written is re-read, and records made
by another version of dge-explain are never mixed with new ones."""
import json

import numpy as np
import pytest
import timm
from PIL import Image

import dge_explain
from dge_explain.evaluation import runs
from dge_explain.evaluation.runs import RunError, RunFolder, write_atomic
from dge_explain.evaluation.segmentation import evaluate
from dge_explain.explainers import build_explainers


@pytest.fixture(scope="module")
def model():
    return timm.create_model("deit_dge_s12_tiny_patch16_224", depth=1, num_classes=10).eval()


@pytest.fixture
def dataset(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 255, (32, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / "images" / f"{index}.png")
        mask = np.zeros((32, 48), np.uint8)
        mask[8:24, 12:36] = 255
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{index}.png")
    return f"ecssd:{tmp_path / 'data'}"


def _run(model, dataset, out):
    return evaluate(model, dataset, build_explainers(model, ["random", "gating:1"]), out, workers=0, progress=False)


@pytest.mark.parametrize("damage", ["", '{"images": 3, "met', "\x00\x00"])
def test_an_empty_or_cut_results_file_is_rebuilt_from_the_records(model, dataset, tmp_path, damage):
    out = tmp_path / "run"
    first = _run(model, dataset, out)
    whole = (out / "results.json").read_text()
    (out / "results.json").write_text(damage)
    assert _run(model, dataset, out) == first
    assert json.loads((out / "results.json").read_text()) == json.loads(whole)


def test_outputs_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(target), "write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old", "the old file stays until the new one is complete"
    write_atomic(target, "new")
    assert target.read_text() == "new" and not list(tmp_path.glob(".*partial"))


def test_a_finished_run_in_a_folder_that_cannot_be_written_is_re_read(model, dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    first = _run(model, dataset, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # root may write anywhere whatever the mode: the folder's writability is what the run tries
    monkeypatch.setattr(runs, "_writable", lambda folder: False)
    assert _run(model, dataset, out) == first
    assert f"{out} is read-only: the finished run's results are re-read, not rewritten" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "data" / "images" / "3.png")
    Image.fromarray(np.full((32, 48), 255, np.uint8)).save(tmp_path / "data" / "masks" / "3.png")
    with pytest.raises(RunError, match=r"run is read-only and 1 of 4 images remain to be scored: make it writable "
                                       r"or choose another --out"):
        _run(model, dataset, out)
    with pytest.raises(RunError, match=r"cannot create --out .*new: .* is not a writable folder"):
        RunFolder(tmp_path / "new", "evaluate").check_usable()


def test_records_of_another_version_are_refused_and_other_code_is_said(model, dataset, tmp_path, monkeypatch,
                                                                        capsys):
    out = tmp_path / "run"
    _run(model, dataset, out)
    settings = json.loads((out / "run.json").read_text())
    assert settings["dge_explain"] == dge_explain.__version__ and len(settings["code"]) == 16
    monkeypatch.setattr(runs, "code_identity", lambda: "0123456789abcdef")
    capsys.readouterr()
    _run(model, dataset, out)
    assert (f"note: {out} was started by other code of dge-explain {dge_explain.__version__} (code "
            f"{settings['code']}, now 0123456789abcdef); its records are kept beside the new ones") in \
        capsys.readouterr().err
    made_by = dge_explain.__version__
    monkeypatch.setattr(dge_explain, "__version__", "99.0")
    with pytest.raises(RunError, match=rf"run holds records made by dge-explain {made_by}; this is 99.0, whose maps "
                                       r"may differ: use another --out to score afresh"):
        _run(model, dataset, out)
