"""The data home, spec expansion, and crash-tolerant JSON-lines files."""
import pytest

from dge_explain import paths


def test_home_and_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("DGE_EXPLAIN_HOME", str(tmp_path))
    assert paths.home() == tmp_path.resolve()
    assert paths.expand("ecssd:$DGE_EXPLAIN_HOME/data/ecssd") == f"ecssd:{tmp_path.resolve()}/data/ecssd"
    assert paths.expand("${DGE_EXPLAIN_HOME}/x") == f"{tmp_path.resolve()}/x"
    with pytest.raises(FileNotFoundError, match=r"weights/none.safetensors not found \(looked under DGE_EXPLAIN_HOME="):
        paths.home_file("weights/none.safetensors")
    monkeypatch.delenv("DGE_EXPLAIN_HOME")
    with pytest.raises(FileNotFoundError, match="set DGE_EXPLAIN_HOME"):
        paths.home()


def test_json_lines_survive_a_cut_off_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert paths.read_json_lines(log) == [{"step": 1}, {"step": 2}]
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert paths.read_json_lines(tmp_path / "missing.jsonl") == []
    log.write_text('{"step": 1}\n{"st{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON line"):
        paths.read_json_lines(log)
