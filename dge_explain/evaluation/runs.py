"""Run folders of the resumable commands: the settings a run was started with,
a lock against a second process, and per-image records keyed by the image's
identity, never by its position in a listing.

A record names its image by key (its file name, or .mat entry), with a cheap
fingerprint of the files (sizes and modification times) and a digest of their
bytes.  On resume an image counts as scored when a record of its key matches its
current fingerprint, or else its current digest (a copied or touched file); an
image that changed, or that is new, is scored afresh; records of images that left
the dataset are left out.  Every result is computed from one record per image of
the current listing, so no image is ever counted twice.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from dge_explain.paths import read_json_lines

FORMAT = 2


class RunError(ValueError):
    """A run folder that cannot be used as asked (the message says why and what to do)."""


def _old_format(path: Path) -> RunError:
    return RunError(f"{path} was written by an older dge-explain (records keyed by position in the "
                    f"folder listing, format 1), which cannot be matched to images safely; evaluate "
                    f"into a new --out (or delete {path.parent})")


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
        settings = json.loads(self.settings_path.read_text())
        if settings.get("format") != FORMAT:
            raise _old_format(self.settings_path)
        return settings

    def start(self, settings: dict) -> None:
        """Record the settings of a new run (atomically), or check that a resumed
        run has the same ones."""
        settings = {"format": FORMAT, "command": self.command, **settings}
        previous = self.previous_settings()
        if previous is None:
            partial = self.settings_path.with_suffix(".partial")
            partial.write_text(json.dumps(settings, indent=2))
            partial.replace(self.settings_path)
            return
        changed = {k: (previous.get(k), settings.get(k)) for k in sorted(set(settings) | set(previous))
                   if previous.get(k) != settings.get(k)}
        if changed:
            detail = "; ".join(f"{k}: {before!r} -> {after!r}" for k, (before, after) in changed.items())
            raise RunError(f"{self.out} holds a run with other settings ({detail[:1500]}); "
                           "use another --out")

    def records(self) -> dict[str, list[dict]]:
        """Every complete record, by image key, in the order written."""
        by_key: dict[str, list[dict]] = {}
        for path in sorted(self.records_dir.glob("rank*.jsonl")):
            for record in read_json_lines(path):
                if record.get("format") != FORMAT:
                    raise _old_format(path)
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
