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
import functools
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

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


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _refuse_smaller_limit(out: Path, limit: int | None, count: int) -> None:
    results = out / "results.json"
    if limit is None or not results.exists():
        return
    previous = json.loads(results.read_text()).get("images", 0)
    if count < previous:
        raise RunError(f"{out} holds the results of {previous} images; --limit {limit} would replace them "
                       f"with those of {count}: choose another --out, or a --limit of at least {previous}")


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory the process has freed back to the system (glibc keeps it otherwise).
    A batch of perturbation allocates and frees ~10 GB in blocks whose sizes glibc
    keeps on its heap once its mmap threshold has risen; without this, a long
    `perturb` run grew by ~0.6 GB per batch of 16 images until out of memory."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def run_resumable(run: RunFolder, dataset, settings: dict, limit: int | None,
                  score_batch: Callable[[dict], list[dict]], write_outputs: Callable,
                  batch_size: int, workers: int, progress: bool):
    """The loop of every resumable command: lock the folder (rank 0), check or record
    the settings, skip the images already scored, split the rest across ranks,
    score batch by batch (score_batch(batch) -> one record body per image) and
    append each record with its image's identity; then, on rank 0, return
    write_outputs(out, records, settings with the record format, limit), records
    being one per image of the current listing in order (None on other ranks).
    dataset items are dicts with key, stat, digest and error (see data.segmentation)."""
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = rank_world()
    with run.locked() if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            _refuse_smaller_limit(run.out, limit, count)
            run.start(settings)
        _barrier(world)  # the settings are checked before any rank reads or appends records
        done, changed, removed = match_records(dataset, count, run.records())
        _barrier(world)  # every rank has read (and mended) the record files before any appends
        if rank == 0:
            for key in changed[:10]:
                say(f"{key} changed since it was scored: scoring it again")
            if len(changed) > 10:
                say(f"... and {len(changed) - 10} more changed images")
            if removed:
                say(f"{len(removed)} scored image(s) are no longer in the dataset and are left out of "
                    f"the results: {', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}")
        mine = [i for i in range(count) if i % world == rank and i not in done]
        loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=workers)
        with run.sink(rank) as sink, tqdm(total=count, initial=len(done), desc=run.command,
                                          disable=not progress or rank != 0) as bar:
            for batch in loader:
                failed = [message for message in batch["error"] if message]
                if failed:
                    raise RunError(f"{failed[0]}; the images scored so far are kept in {run.records_dir}: "
                                   "fix or remove the file and rerun to resume")
                for j, body in enumerate(score_batch(batch)):
                    record = {"format": FORMAT, "key": batch["key"][j], "stat": batch["stat"][j].tolist(),
                              "digest": batch["digest"][j], **body}
                    sink.write(json.dumps(record) + "\n")
                sink.flush()
                release_freed_memory()
                bar.update(min(len(batch["key"]) * world, bar.total - bar.n))  # rank 0 speaks for all
        _barrier(world)
        if rank != 0:
            return None
        done, _, _ = match_records(dataset, count, run.records())
        missing = [dataset.keys()[i] for i in range(count) if i not in done]
        if missing:
            raise RuntimeError(f"records of images {missing[:10]} are missing from {run.records_dir}")
        return write_outputs(run.out, [done[i] for i in range(count)], {"format": FORMAT, **settings}, limit)
