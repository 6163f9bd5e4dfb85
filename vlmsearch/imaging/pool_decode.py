"""Image decoding in worker processes without torch, for encoders whose preprocessing is
numpy (the ONNX image tower's :class:`~vlmsearch.models.onnx.image_tower.Preprocess`).

The twin of :func:`vlmsearch.imaging.decode.iter_decoded`, which needs torch's DataLoader:
the same per-file work (:func:`~vlmsearch.imaging.decode.decode_task`: read, hash, decode,
transform, an error record for any failure) in a process pool, batches yielded in task
order with the decodable images' arrays stacked. At most ``2 * workers`` batches are in
flight, so memory stays bounded whatever the number of files.

The workers are forked where the platform can (as torch's DataLoader does): a spawned or
fork-server worker re-runs the caller's ``__main__``, which breaks scripts that call the
Python API without a ``__main__`` guard and costs the CLI's imports in every worker. The
caller forks after the onnxruntime session has loaded, when its threads are idle.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from vlmsearch.imaging.decode import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    DecodeTask,
    _lower_priority,
    decode_task,
)


def decode_batch(
    tasks: list[DecodeTask],
    transform: Callable[[Any], np.ndarray],
    max_pixels: int,
    draft: tuple[int, int] | None,
) -> tuple[list[Decoded], np.ndarray | None]:
    """(records without pixels, the decodable records' arrays stacked, or None)."""
    records = [decode_task(t, transform, max_pixels, draft) for t in tasks]
    ok = [r.pixels for r in records if r.pixels is not None]
    for r in records:
        r.pixels = None
    return records, np.stack(ok) if ok else None


def _init_worker() -> None:
    _lower_priority(0)


def _pool(workers: int) -> ProcessPoolExecutor:
    fork = "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if fork else None)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)


def iter_decoded_arrays(
    tasks: Sequence[DecodeTask],
    transform: Callable[[Any], np.ndarray],
    batch_size: int = 64,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Iterator[tuple[list[Decoded], np.ndarray | None]]:
    """Yield (records, stacked arrays of the decodable records or None) in task order;
    ``transform`` must be picklable (it travels to the workers). ``workers=0`` decodes in
    this process."""
    tasks = list(tasks)
    chunks = [tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)]
    if workers <= 0:
        for chunk in chunks:
            yield decode_batch(chunk, transform, max_pixels, draft)
        return
    pool = _pool(workers)
    try:
        pending: deque[Future[tuple[list[Decoded], np.ndarray | None]]] = deque()
        todo = iter(chunks)
        for chunk in todo:
            pending.append(pool.submit(decode_batch, chunk, transform, max_pixels, draft))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(decode_batch, nxt, transform, max_pixels, draft))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
