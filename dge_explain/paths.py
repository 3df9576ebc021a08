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


def home_file(relative: str, override: str | os.PathLike | None = None) -> Path:
    """A file under the data home; raises FileNotFoundError naming the full path."""
    path = home(override) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (looked under {HOME_ENV}={home(override)})")
    return path
