"""Where shared data and weights live: ``$DGE_EXPLAIN_HOME`` (e.g. the ``shared/``
folder beside a checkout), overridable per command with ``--home``."""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "DGE_EXPLAIN_HOME"


def home(override: str | os.PathLike | None = None) -> Path:
    """The data home; raises FileNotFoundError naming the variable when unset or missing."""
    value = override if override is not None else os.environ.get(HOME_ENV)
    if not value:
        raise FileNotFoundError(
            f"no data home: set {HOME_ENV} (e.g. export {HOME_ENV}=../shared) or pass --home")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{HOME_ENV} points at {path}, which is not a directory")
    return path


def expand(spec: str, override: str | os.PathLike | None = None) -> str:
    """Replace $DGE_EXPLAIN_HOME (or ${DGE_EXPLAIN_HOME}) in a path or dataset spec
    with the data home, for arguments quoted so that the shell left it alone."""
    for marker in ("${" + HOME_ENV + "}", "$" + HOME_ENV):
        if marker in spec:
            spec = spec.replace(marker, str(home(override)))
    return spec


def read_json_lines(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file.  A last line cut off by a crash is
    dropped and the file truncated to the last complete line, so that appending
    can go on."""
    import json

    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        with path.open("r+b") as handle:
            handle.truncate(end)
    entries = []
    for number, line in enumerate(raw[:end].decode().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
    return entries


def home_file(relative: str, override: str | os.PathLike | None = None) -> Path:
    """A file under the data home; raises FileNotFoundError naming the full path."""
    path = home(override) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (looked under {HOME_ENV}={home(override)})")
    return path
