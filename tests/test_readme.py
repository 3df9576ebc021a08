"""The README and the pages of docs/ stay honest: every dge-explain command of a
```sh block, or quoted whole in the text, parses with the real argument parser;
every script, module and make target such a block runs exists; every ```python
block runs as written (unless its fence says why not: ```python title="not run:
REASON"), from the repository root, writing its runs/ into a temporary copy of
it; every relative link (of the pages and of the tutorial notebook's text)
points at a file that exists (from docs/, a file inside docs/, the only folder
the site serves) and at an anchor its page has; the README lists every
registered explainer; and no page says the perturbation AUC spans 10-90 %."""
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from dge_explain.cli import build_parser
from dge_explain.methods import registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
NOTEBOOK = ROOT / "notebooks" / "tutorial.ipynb"

FENCE = re.compile(r"^[ \t]*```([\w+-]*)([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
# The only way out of running a python block: a reason in its fence's title.
NOT_RUN = re.compile(r'^\s*title="not run: ([^"]*\S[^"]*)"\s*$')
SHELL_OPERATORS = {"&&", "||", ";", "|"}


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks(page: Path, language: str) -> list[tuple[str, str]]:
    """(fence attributes, code) of every fenced block of that language."""
    return [(attributes, code) for lang, attributes, code in FENCE.findall(page.read_text())
            if lang == language]


def _shell_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of every simple command of every ```sh block, with line
    continuations joined, comments and leading VAR=value assignments dropped, and
    chains (&&, ||, ;, |) split."""
    commands = []
    for page in PAGES:
        for _, block in _blocks(page, "sh"):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                command: list[str] = []
                for word in words + [";"]:
                    if word not in SHELL_OPERATORS:
                        command.append(word)
                        continue
                    while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):
                        command = command[1:]
                    if command:
                        commands.append((_name(page), command))
                    command = []
    return commands


def _inline_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of every whole command quoted in the text: a code span running
    dge-explain with options, and no placeholder ([...], ...) in it."""
    commands = []
    for page in PAGES:
        for span in re.findall(r"`([^`\n]*dge-explain [^`\n]*)`", FENCE.sub("", page.read_text())):
            if " --" in span and not re.search(r"\[|\.\.\.|…", span):
                commands.append((_name(page), shlex.split(span)))
    return commands


def _dge_explain_commands() -> list[tuple[str, list[str]]]:
    return [(page, words[1:]) for page, words in _shell_commands() + _inline_commands()
            if words[0].endswith("dge-explain")]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", (ROOT / "Makefile").read_text(), re.M))


def _python_blocks() -> list[tuple[str, int, str, str]]:
    """(page, index, fence attributes, code) of every ```python block."""
    return [(_name(page), index, attributes, code) for page in PAGES
            for index, (attributes, code) in enumerate(_blocks(page, "python"))]


def test_there_are_commands_to_check():
    assert len(_dge_explain_commands()) >= 5
    assert {page for page, _ in _dge_explain_commands()} >= {"README.md", "docs/protocol.md"}


@pytest.mark.parametrize("page, arguments", [pytest.param(page, arguments, id=f"{page}: {' '.join(arguments[:2])}")
                                              for page, arguments in _dge_explain_commands()])
def test_commands_parse(page, arguments, capsys):
    try:
        build_parser().parse_args(arguments)
    except SystemExit as exit:
        if exit.code == 0 and {"-h", "--help"} & set(arguments):
            return   # --help parsed: it prints the help and exits 0
        error = capsys.readouterr().err.strip().splitlines()[-1:]
        pytest.fail(f"{page}: `dge-explain {shlex.join(arguments)}` does not parse (exit {exit.code}): {error}")


@pytest.mark.parametrize("page, words", [pytest.param(page, words, id=f"{page}: {' '.join(words[:3])}")
                                          for page, words in _shell_commands()])
def test_what_commands_run_exists(page, words):
    """Scripts (.py, .sh), `-m dge_explain...` modules and make targets named by a
    shell block are in the repository."""
    missing = []
    for position, word in enumerate(words):
        if re.fullmatch(r"[\w./-]+\.(py|sh)", word) and not (ROOT / word).is_file():
            missing.append(word)
        if word == "-m" and position + 1 < len(words) and words[position + 1].startswith("dge_explain"):
            module = ROOT / words[position + 1].replace(".", "/")
            if not (module.with_suffix(".py").is_file() or (module / "__init__.py").is_file()):
                missing.append(words[position + 1])
    if words[0] == "make":
        targets = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
        missing += [f"make target {target}" for target in targets if target not in _make_targets()]
    assert not missing, f"{page}: `{shlex.join(words)}` runs {missing}, which the repository lacks"


def test_there_are_python_blocks_to_run():
    assert any(not NOT_RUN.match(attributes) for _, _, attributes, _ in _python_blocks())


@pytest.fixture
def checkout_view(tmp_path) -> Path:
    """The repository root as a block sees it, with ../shared beside it, but whose
    runs/ is its own: what a block writes stays out of the checkout (and a run
    folder left there by an older version cannot refuse the block)."""
    view = tmp_path / ROOT.name
    view.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != "runs":
            (view / entry.name).symlink_to(entry)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared.resolve())
    return view


@pytest.mark.parametrize("page, index, attributes, code", [pytest.param(*block, id=f"{block[0]} #{block[1]}")
                                                            for block in _python_blocks()])
def test_python_blocks_run(page, index, attributes, code, monkeypatch, checkout_view):
    """Each block runs alone, from the repository root, as written; a block that
    cannot run in the tests says why in its fence and must still compile."""
    compiled = compile(code, f"{page} python block {index}", "exec")
    if NOT_RUN.match(attributes):
        return
    assert not attributes.strip(), (
        f"{page} python block {index}: fence attributes {attributes.strip()!r}; the only one allowed "
        f'is title="not run: REASON"')
    for relative in re.findall(r"\.\./shared/[\w./-]+", code):
        if not (ROOT / relative).exists():
            pytest.skip(f"{page} python block {index} reads {relative}, which is missing beside the checkout")
    monkeypatch.chdir(checkout_view)
    exec(compiled, {"__name__": "__main__"})


def _without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _links(page: Path) -> list[str]:
    return _links_in(page.read_text())


def _links_in(markdown: str) -> list[str]:
    text = _without_code(markdown)
    return (re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
            + re.findall(r"""(?:src|href)=["']([^"']+)["']""", text))


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub and as mkdocs (Python-Markdown's
    toc) write them, plus explicit {#id} attributes."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", _without_fences(page.read_text()), re.M):
        explicit = re.search(r"\{\s*#([\w-]+)[^}]*\}\s*$", heading)
        if explicit:
            anchors.add(explicit.group(1))
            heading = heading[:explicit.start()]
        words = re.sub(r"[^\w\- ]", "", heading.replace("`", "")).strip().lower()
        anchors.add(words.replace(" ", "-"))
        anchors.add(re.sub(r"[-\s]+", "-", words))
    return anchors


def _without_fences(text: str) -> str:
    return FENCE.sub("", text)


def _broken_links(page: Path, links: list[str]) -> list[str]:
    broken = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        # normpath, not resolve: the site serves paths as written, symlinks or not
        destination = Path(os.path.normpath(page.parent / path)) if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
            continue
        if page.parent == DOCS:
            if not destination.is_relative_to(DOCS):
                broken.append(f"{target} (outside docs/, which the site does not serve)")
            elif destination.is_dir():
                broken.append(f"{target} (a folder: the site serves no listing; link a file)")
        if anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    broken = _broken_links(page, _links(page))
    assert not broken, f"{_name(page)}: broken links: {', '.join(broken)}"


def test_the_notebooks_links_resolve():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    links = [link for cell in cells if cell["cell_type"] == "markdown"
             for link in _links_in("".join(cell["source"]))]
    assert len(links) >= 3, f"{_name(NOTEBOOK)}: expected links to the docs, found {links}"
    broken = _broken_links(NOTEBOOK, links)
    assert not broken, f"{_name(NOTEBOOK)}: broken links: {', '.join(broken)}"


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found, f"README.md has no section '## {title}'"
    return found.group(1)


def test_the_readme_lists_every_registered_explainer():
    """The README's list cannot drift from the registry (dge_explain.methods)."""
    listed = set(re.findall(r"`([\w+-]+)(?:\[[^`]*\])?`", _readme_section("Explainers")))
    missing = [name for name in registry() if name not in listed]
    assert not missing, f"README.md's Explainers section does not list the registered methods {missing}"


def test_no_page_says_the_perturbation_auc_starts_at_10_percent():
    """The AUC is the trapezoid over 0, 10, ..., 90 % removed (the unperturbed top-1
    at 0): it spans 0-90 %, as evaluation.perturbation.AUC_SPAN says."""
    wrong = [f"{_name(page)}: ...{match.group(0)}..." for page in PAGES
             for match in re.finditer(r".{0,40}\b10\s*(?:%\s*)?(?:-|–|to)\s*90\s*%.{0,40}", page.read_text())]
    assert not wrong, f"the perturbation AUC spans 0-90 % removed; these say 10-90 %: {wrong}"


def test_every_page_is_in_the_site_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def entries(nav):
        for item in nav:
            if isinstance(item, dict):
                for value in item.values():
                    yield from (entries(value) if isinstance(value, list) else [value])
            else:
                yield item

    listed = set(entries(config["nav"]))
    pages = {str(page.relative_to(DOCS)) for page in PAGES if page.parent == DOCS}
    assert pages <= listed, f"docs pages missing from mkdocs.yml's nav: {sorted(pages - listed)}"
    assert all((DOCS / entry).is_file() for entry in listed), \
        f"mkdocs.yml's nav names missing pages: {sorted(e for e in listed if not (DOCS / e).is_file())}"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; the rest belongs in docs/ (issue 25: at most 250)"
