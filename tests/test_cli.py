"""The command line: every mistake that needs no model is refused in one line
before torch is imported (so at once: no model, no 10-40 s of imports), and the
help of every subcommand documents every option, its default and an example."""
import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys

import pytest

from dge_explain.cli import COMMANDS, build_parser

PROBE = """
import sys
from dge_explain.cli import main
code = main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def _run(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k != "DGE_EXPLAIN_HOME"}
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          env={**environment, **(env or {})})


@pytest.fixture
def pairs(tmp_path):
    from PIL import Image

    for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.new("RGB" if folder == "images" else "L", (32, 32)).save(tmp_path / "data" / folder / f"a{suffix}")
    return tmp_path / "data"


def _refused(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stdout == "torch imported: False\n", "refused before torch (and the model) loaded"


def test_run_folder_and_file_mistakes_are_refused_before_torch_loads(pairs, tmp_path):
    home = {"DGE_EXPLAIN_HOME": "/nonexistent"}
    base = ["evaluate", "--dataset", f"ecssd:{pairs}", "--methods", "random"]
    timm_model = ["--model", "deit_dge_s12_tiny_patch16_224", "--random-weights"]
    (tmp_path / "afile").write_text("x")
    _refused(_run(*base, *timm_model, "--out", tmp_path / "afile"), f"--out {tmp_path / 'afile'} is a file, not a folder")
    _refused(_run(*base, "--out", tmp_path / "run"), "no data home: set DGE_EXPLAIN_HOME")
    _refused(_run(*base, "--out", tmp_path / "run", env=home), "DGE_EXPLAIN_HOME points at /nonexistent")
    _refused(_run(*base, "--model", "deit_dge_s12_tiny_patch16_224", "--checkpoint", tmp_path / "none.pth",
                  "--out", tmp_path / "run"), f"checkpoint {tmp_path / 'none.pth'} does not exist")
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "results.json").write_text(json.dumps({"images": 4, "limit": 4}))
    _refused(_run(*base, *timm_model, "--limit", "2", "--out", finished),
             "holds the results of a run with --limit 4; --limit 2 would replace them")
    with open(finished / ".lock", "w") as lock:
        lock.write("dge-explain evaluate (pid 1 on elsewhere)\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _refused(_run(*base, *timm_model, "--out", finished), f"{finished} is in use by dge-explain evaluate (pid 1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--limit", "0", "argument --limit: must be at least 1, got 0"),
    ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
    ("--workers", "-1", "argument --workers: must be 0 or more, got -1"),
    ("--mask-threshold", "300", "argument --mask-threshold: must be a grey level from 1 to 255, got 300"),
])
def test_bad_numbers_are_refused_while_parsing(option, value, message, pairs, tmp_path):
    result = _run("evaluate", "--dataset", f"ecssd:{pairs}", option, value, "--out", tmp_path / "run")
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(message), result.stderr
    assert result.stdout == "", "argparse exits before the probe prints"


def _actions(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize("name", [command.__name__.rsplit(".", 1)[1] for command in COMMANDS])
def test_every_option_has_help_and_every_example_parses(name):
    parser = _subparsers()[name]
    for action in _actions(parser):
        assert action.help, f"{name} {action.option_strings[0]} has no help"
    text = parser.format_help()
    formatter = parser._get_formatter()
    for action in _actions(parser):
        if action.default is not None and not isinstance(action.default, bool) \
                and action.default is not argparse.SUPPRESS:
            assert "(default:" in formatter._expand_help(action), f"{name} {action.option_strings[-1]} hides its default"
    examples = text.split("examples:\n", 1)[1].strip().splitlines()
    assert examples, f"{name} shows no example"
    for line in examples:
        words = shlex.split(line)
        assert words[:2] == ["dge-explain", name]
        build_parser().parse_args(words[1:])
