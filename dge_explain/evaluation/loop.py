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
