"""Model calls from concurrent requests: one at a time per model, in arrival order.

Each served collection has its own encoder and its own :class:`FairLock`, so a long request
on one collection never holds up another's. Within a collection, :class:`SerialEncoder`
takes the lock for a slice of the work at a time (:data:`TEXT_SLICE` texts), and the lock
is handed to the longest waiter on release, so a small query waits for one slice of a big
one, not for all of it. (A plain ``threading.Lock`` is not fair: the releasing thread
usually takes it straight back.)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

TEXT_SLICE = 64  # texts embedded per turn of the lock (about 0.1-0.5 s on a CPU)
IMAGE_SLICE = 8


class FairLock:
    """A re-entrant lock granted in FIFO order."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[object] = deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            ticket = object()
            self._queue.append(ticket)
            try:
                while self._owner is not None or self._queue[0] is not ticket:
                    self._cond.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FairLock not held by this thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _stack(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    import scipy.sparse as sp  # sparse (ASIF) rows

    return sp.vstack(parts, format="csr")


class BudgetExceeded(Exception):
    """More texts than :meth:`SerialEncoder.budget` allows were to be embedded."""


class SerialEncoder:
    """An encoder whose model calls hold ``lock``, a slice of the inputs at a time."""

    def __init__(self, inner: Any, lock: FairLock) -> None:
        self._inner = inner
        self._lock = lock
        self._local = threading.local()  # the calling thread's text budget, if any

    @contextmanager
    def budget(self, texts: int) -> Iterator[None]:
        """Within the block, this thread may embed at most ``texts`` texts; a call that would
        pass the budget raises :class:`BudgetExceeded` before it runs."""
        self._local.left = texts
        try:
            yield
        finally:
            self._local.left = None

    def _spend(self, n: int) -> None:
        left = getattr(self._local, "left", None)
        if left is not None:
            if n > left:
                raise BudgetExceeded(n)
            self._local.left = left - n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _sliced(self, fn: Callable[[Any], Any], items: Sequence[Any], step: int) -> Any:
        if len(items) <= step:
            with self._lock:
                return fn(items)
        parts = []
        for lo in range(0, len(items), step):
            with self._lock:
                parts.append(fn(items[lo : lo + step]))
        return _stack(parts)

    def encode_texts(self, texts: Any) -> np.ndarray:
        texts = list(texts)
        self._spend(len(texts))
        return self._sliced(self._inner.encode_texts, list(texts), TEXT_SLICE)

    def encode_images(self, images: Any) -> np.ndarray:
        return self._sliced(self._inner.encode_images, list(images), IMAGE_SLICE)

    def encode_pixels(self, pixels: Any) -> np.ndarray:
        with self._lock:
            return self._inner.encode_pixels(pixels)

    def student_features(self, pixels: Any) -> np.ndarray:
        with self._lock:
            return self._inner.student_features(pixels)
