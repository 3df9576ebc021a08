"""The README stays honest: its Python example runs, and every dge-explain
command it shows parses with the real argument parser."""
import re
import shlex
from pathlib import Path

import pytest

from dge_explain.cli import build_parser

from conftest import shared_file

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _commands() -> list[list[str]]:
    commands = []
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            words = shlex.split(line)
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words = words[1:]
            if words and words[0].endswith("dge-explain"):
                commands.append(words[1:])
    return commands


def test_there_are_commands_to_check():
    assert len(_commands()) >= 5


@pytest.mark.parametrize("arguments", _commands(), ids=lambda a: " ".join(a[:2]))
def test_commands_parse(arguments):
    build_parser().parse_args(arguments)


def test_python_example_runs(monkeypatch):
    shared_file("weights/deit_tiny_patch16_224.safetensors")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), {})
