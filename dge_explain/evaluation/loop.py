"""The loop of every resumable command (evaluate, perturb): lock the run folder,
check its settings, skip what is scored, split the rest across ranks, score batch
by batch and append one record per image, then write the outputs from exactly one
record per image of the current listing."""
from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Callable

from dge_explain.console import say
from dge_explain.evaluation.runs import FORMAT, RunError, RunFolder, match_records


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


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


def _select(batch: dict, rows: list[int]) -> dict:
    """The rows of a collated batch (tensors indexed, lists picked)."""
    import torch

    index = torch.tensor(rows, dtype=torch.long)
    return {key: value[index] if isinstance(value, torch.Tensor) else [value[i] for i in rows]
            for key, value in batch.items()}


def run_resumable(run: RunFolder, dataset, settings: dict, limit: int | None,
                  score_batch: Callable[[dict], list[dict]], write_outputs: Callable,
                  batch_size: int, workers: int, progress: bool):
    """The loop of every resumable command: lock the folder (rank 0), check or record
    the settings, skip the images already scored, split the rest across ranks,
    score batch by batch (score_batch(batch) -> one record body per image) and
    append each record with its image's identity; an image that cannot be read is
    named in one line and recorded as failed, and the run goes on.  Then, on rank 0,
    returns write_outputs(out, records, settings with the record format, limit,
    failed, write), records being one per readable image of the current listing in
    order, failed the [{key, error}] of the others (None on other ranks).  A
    read-only folder holding a finished run is re-read: write is then False.
    dataset items are dicts with key, stat, digest and error (see data.segmentation)."""
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    count = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = rank_world()
    if rank == 0:
        run.check_usable(limit)
        if run.out.exists() and not run.writable():
            return _reread(run, dataset, count, settings, limit, write_outputs)
    with run.locked() if rank == 0 else contextlib.nullcontext():
        if rank == 0:
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
                keys = batch["key"]
                good = [j for j, message in enumerate(batch["error"]) if not message]
                records = {}
                for j in set(range(len(keys))) - set(good):
                    say(f"skipped: {batch['error'][j]}")
                    records[j] = {"error": batch["error"][j]}
                if good:
                    records.update(zip(good, score_batch(_select(batch, good))))
                for j in range(len(keys)):
                    record = {"format": FORMAT, "key": keys[j], "stat": batch["stat"][j].tolist(),
                              "digest": batch["digest"][j], **records[j]}
                    sink.write(json.dumps(record) + "\n")
                sink.flush()
                release_freed_memory()
                bar.update(min(len(keys) * world, bar.total - bar.n))  # rank 0 speaks for all
        _barrier(world)
        if rank != 0:
            return None
        return _outputs(run, dataset, count, settings, limit, write_outputs, write=True)


def _outputs(run: RunFolder, dataset, count: int, settings: dict, limit, write_outputs, write: bool):
    done, _, _ = match_records(dataset, count, run.records())
    missing = [dataset.keys()[i] for i in range(count) if i not in done]
    if missing:
        raise RuntimeError(f"records of images {missing[:10]} are missing from {run.records_dir}")
    failed = [{"key": done[i]["key"], "error": done[i]["error"]} for i in range(count) if "error" in done[i]]
    scored = [done[i] for i in range(count) if "error" not in done[i]]
    if not scored:
        raise RunError(f"none of the {count} images could be read (first: {failed[0]['error']})")
    if failed:
        say(f"{len(failed)} of {count} images could not be read and are left out of the results "
            f"(listed in them): {', '.join(f['key'] for f in failed[:5])}{' ...' if len(failed) > 5 else ''}")
    from dge_explain import __version__

    info = {"format": FORMAT, "dge_explain": __version__, **settings}
    return write_outputs(run.out, scored, info, limit, failed, write)


def _reread(run: RunFolder, dataset, count: int, settings: dict, limit, write_outputs):
    """A finished run in a folder that cannot be written: its outputs computed from
    its records (same settings, nothing left to score), not written."""
    run.check_settings(settings)
    done, _, _ = match_records(dataset, count, run.records())
    remaining = count - len(done)
    if remaining:
        raise RunError(f"{run.out} is read-only and {remaining} of {count} images remain to be scored: make it "
                       "writable or choose another --out")
    say(f"{run.out} is read-only: the finished run's results are re-read, not rewritten")
    return _outputs(run, dataset, count, settings, limit, write_outputs, write=False)
