"""Run folders of the resumable commands: the settings a run was started with,
a lock against a second process, and per-image records keyed by the image's
identity, never by its position in a listing.

A record names its image by key (its file name, or .mat entry), with a cheap
fingerprint of the files (see ``data.folders.fingerprint``) and a digest of their
bytes.  On resume an image counts as scored when a record of its key matches its
current fingerprint, or else its current digest (a copied or touched file); an
image that changed, or that is new, is scored afresh; records of images that left
the dataset are left out.  Every result is computed from one record per image of
the current listing, so no image is ever counted twice.  An image that cannot be
read gets a record of its error instead: it is left out of the results, named in
them, and read again once its file changes.

run.json holds the settings and the dge-explain version that made the records: a
resume with other settings, or by another version, is refused (the maps could
differ); outputs are written whole or not at all (``write_atomic``), and any that
is missing or unreadable is rebuilt from the records.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from dge_explain.paths import read_json_lines

FORMAT = 3


class RunError(ValueError):
    """A run folder that cannot be used as asked (the message says why and what to do)."""


def _old_format(path: Path, found) -> RunError:
    return RunError(f"{path} was written by an older dge-explain (run format {found}, this one writes "
                    f"{FORMAT}), whose records cannot be matched safely; use a new --out (or delete {path.parent})")


def write_atomic(path: Path, content: str | bytes) -> None:
    """The whole file or, after a crash, the old one: never a truncated one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    if isinstance(content, str):
        partial.write_text(content)
    else:
        partial.write_bytes(content)
    os.replace(partial, path)


def _writable(folder: Path) -> bool:
    """Whether files can be created in an existing folder (tried: permission bits
    do not tell for root, read-only mounts or immutable folders)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def code_identity() -> str:
    """A digest of the installed package's Python sources and compiled op: what made
    a run's records, beyond the version number."""
    import hashlib

    package = Path(__file__).resolve().parents[1]
    hasher = hashlib.blake2b(digest_size=8)
    for path in sorted([*package.rglob("*.py"), *package.glob("_C*.so")]):
        hasher.update(str(path.relative_to(package)).encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


class RunFolder:
    def __init__(self, out, command: str):
        self.out = Path(out)
        self.command = command
        self.records_dir = self.out / "records"
        self.settings_path = self.out / "run.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the folder by this process (released when it ends, even
        by a crash: an advisory lock on OUT/.lock)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunError(f"{self.out} is in use by {holder}; wait for that run to end or "
                               "choose another --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"dge-explain {self.command} (pid {os.getpid()} on {socket.gethostname()}, "
                         f"started {datetime.datetime.now().isoformat(timespec='seconds')})\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def previous_settings(self) -> dict | None:
        if not self.settings_path.exists():
            return None
        try:
            settings = json.loads(self.settings_path.read_text())
        except (OSError, ValueError) as error:
            raise RunError(f"{self.settings_path} is unreadable ({error}): the settings its records were "
                           f"made with are lost; use another --out (or delete {self.out})") from None
        if settings.get("format") != FORMAT:
            raise _old_format(self.settings_path, settings.get("format", 1))
        if settings.get("command") != self.command:
            raise RunError(f"{self.out} holds a `dge-explain {settings.get('command')}` run, not a "
                           f"`{self.command}` one; use another --out")
        return settings

    def writable(self) -> bool:
        return _writable(self.out)

    def check_usable(self, limit: int | None = None, in_use: bool = True) -> None:
        """Everything about the folder that can be refused before the model loads:
        not a folder, not creatable, in use (unless in_use is False: a torchrun rank
        other than 0, whose rank 0 holds the folder), another format or command, or
        a --limit below the finished run's.  A read-only folder passes (a finished run
        can be re-read); run_resumable refuses it if images remain to be scored."""
        if self.out.exists() and not self.out.is_dir():
            raise RunError(f"--out {self.out} is a file, not a folder")
        if not self.out.exists():
            parent = next(p for p in self.out.absolute().parents if p.exists())
            if not parent.is_dir() or not _writable(parent):
                raise RunError(f"cannot create --out {self.out}: {parent} is not a writable folder")
            return
        lock = self.out / ".lock"
        if in_use and lock.exists():
            with open(lock) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = handle.read().strip() or "another process"
                    raise RunError(f"{self.out} is in use by {holder}; wait for that run to end or "
                                   "choose another --out") from None
                fcntl.flock(handle, fcntl.LOCK_UN)
        self.previous_settings()
        self.refuse_smaller_limit(limit)

    def previous_results(self) -> dict | None:
        """The results file of the last finished run (None if missing or unreadable:
        it is rebuilt from the records)."""
        for name in ("results.json", "index.json"):
            path = self.out / name
            if path.exists():
                try:
                    return json.loads(path.read_text())
                except (OSError, ValueError):
                    return None
        return None

    def refuse_smaller_limit(self, limit: int | None) -> None:
        """A --limit below the one the finished run had would replace its results with
        fewer images' (the records stay, but results.json would shrink)."""
        previous = self.previous_results()
        if limit is None or previous is None:
            return
        before = previous.get("limit")
        images = previous.get("images")
        images = len(images) if isinstance(images, list) else images
        if (before is None and images is not None and limit < images) or (before is not None and limit < before):
            had = f"--limit {before}" if before is not None else f"all {images} images"
            raise RunError(f"{self.out} holds the results of a run with {had}; --limit {limit} would replace "
                           f"them with those of fewer images: choose another --out, or a --limit of at least "
                           f"{before if before is not None else images} (or none)")

    def check_settings(self, settings: dict) -> dict | None:
        """The settings of the run in the folder (None if there is none yet), refused
        unless the same as these and made by this version of dge-explain."""
        from dge_explain import __version__

        settings = {"format": FORMAT, "command": self.command, "dge_explain": __version__, **settings}
        previous = self.previous_settings()
        if previous is None:
            return None
        if previous.get("dge_explain") != __version__:
            raise RunError(f"{self.out} holds records made by dge-explain {previous.get('dge_explain')}; this is "
                           f"{__version__}, whose maps may differ: use another --out to score afresh")
        changed = {k: (previous.get(k), settings.get(k)) for k in sorted(set(settings) | set(previous))
                   if k != "code" and previous.get(k) != settings.get(k)}
        if changed:
            detail = "; ".join(f"{k}: {before!r} -> {after!r}" for k, (before, after) in changed.items())
            raise RunError(f"{self.out} holds a run with other settings ({detail[:1500]}); "
                           "use another --out")
        return previous

    def start(self, settings: dict) -> None:
        """Record the settings of a new run (atomically, with the code that runs it),
        or check that a resumed run has the same ones (check_settings); a resume by
        other code of the same version is said, not refused."""
        from dge_explain import __version__

        previous = self.check_settings(settings)
        code = code_identity()
        if previous is None:
            write_atomic(self.settings_path, json.dumps(
                {"format": FORMAT, "command": self.command, "dge_explain": __version__, **settings, "code": code},
                indent=2))
        elif previous.get("code") != code:
            from dge_explain.console import say

            say(f"note: {self.out} was started by other code of dge-explain {__version__} (code "
                f"{previous.get('code')}, now {code}); its records are kept beside the new ones")

    def records(self) -> dict[str, list[dict]]:
        """Every complete record, by image key, in the order written."""
        by_key: dict[str, list[dict]] = {}
        for path in sorted(self.records_dir.glob("rank*.jsonl")):
            for record in read_json_lines(path):
                if record.get("format") != FORMAT:
                    raise _old_format(path, record.get("format", 1))
                by_key.setdefault(record["key"], []).append(record)
        return by_key

    def sink(self, rank: int):
        self.records_dir.mkdir(parents=True, exist_ok=True)
        return (self.records_dir / f"rank{rank}.jsonl").open("a")


def match_records(dataset, count: int, records: dict[str, list[dict]]) -> tuple[dict[int, dict], list[str], list[str]]:
    """(position -> the record that stands for the image there, keys of images that
    changed since they were scored, keys recorded but no longer in the dataset)."""
    keys = dataset.keys()
    done, changed = {}, []
    for position in range(count):
        candidates = records.get(keys[position])
        if not candidates:
            continue
        stat = dataset.stat(position)
        match = next((r for r in candidates if r["stat"] == stat), None)
        if match is None:
            digest = dataset.digest(position)
            match = next((r for r in candidates if r["digest"] == digest), None)
        if match is None:
            changed.append(keys[position])
        else:
            done[position] = match
    present = set(keys)
    removed = sorted(k for k in records if k not in present)
    return done, changed, removed
