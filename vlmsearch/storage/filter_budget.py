"""Running filter queries within a time and memory budget, and interruptibly.

A filter runs on a worker thread with its own DuckDB cursor, while the caller waits:

- past ``timeout_s`` the caller stops waiting at once with an error, and the query is
  interrupted (DuckDB checks between chunks of 2048 rows, so it may run on briefly, but
  nobody waits for it);
- Ctrl-C reaches a waiting main thread (a thread blocked inside DuckDB never sees it),
  which interrupts the query and re-raises :class:`KeyboardInterrupt`;
- at most ``max_concurrent`` queries run on one table, each on one thread, under one
  ``memory_limit`` (the table plus ``memory_mb``) and with spilling to disk off; with a
  time budget, a query waits at most a second for a turn, then gives up (busy).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from vlmsearch.errors import BusyError, QueryError

_CANCEL_EVERY_S = 0.2  # an interrupt that lands between queries is lost: repeat it
_CTRL_C_GRACE_S = 2.0  # how long Ctrl-C waits for DuckDB to stop before exiting anyway
# With a time budget, a filter waits this long at most for a turn: requests queued behind
# slow filters would otherwise each hold a server worker thread for their whole budget.
_SLOT_WAIT_S = 1.0


@dataclass(frozen=True)
class FilterBudget:
    """Limits on one filter query. ``timeout_s=None``: no time limit (the CLI, where
    Ctrl-C still interrupts)."""

    timeout_s: float | None = None
    memory_mb: int = 512  # on top of the table's own size
    max_concurrent: int = 2


class FilterTimeout(QueryError):
    """A filter ran past its time budget."""


def configure(con: Any, budget: FilterBudget) -> None:
    """One thread per query, a memory limit, no temporary files; call after loading the
    table (its size sets the limit) and before locking the configuration."""
    sql = "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()"
    used = int(con.execute(sql).fetchone()[0])
    con.execute("SET threads = 1")
    con.execute("SET temp_directory = ''")
    con.execute("SET max_temp_directory_size = '0B'")
    con.execute(f"SET memory_limit = '{used + budget.memory_mb * 2**20}B'")


class _Job:
    """One query on one cursor; ``finished`` is set under ``lock`` so that an interrupt
    never reaches the cursor once it has gone back to the pool."""

    def __init__(self, cursor: Any, sql: str) -> None:
        self.cursor = cursor
        self.sql = sql
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.finished = False
        self.cancelled = False

    def run(self) -> None:
        try:
            if not self.cancelled:
                self.result = self.cursor.execute(self.sql).fetchnumpy()
        except BaseException as e:  # handed to the waiting thread
            self.error = e

    def interrupt(self) -> None:
        with self.lock:
            if not self.finished:
                self.cursor.interrupt()

    def cancel(self) -> None:
        """Interrupt until the query stops (in the background: nobody waits for it)."""
        self.cancelled = True

        def keep_interrupting() -> None:
            while not self.done.is_set():
                self.interrupt()
                self.done.wait(_CANCEL_EVERY_S)

        name = "vlmsearch-filter-cancel"
        threading.Thread(target=keep_interrupting, name=name, daemon=True).start()


class QueryRunner:
    """Runs queries on cursors of one connection (see the module docstring)."""

    def __init__(self, con: Any, budget: FilterBudget) -> None:
        self._con = con
        self.budget = budget
        self._slots = threading.BoundedSemaphore(max(1, budget.max_concurrent))
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._jobs: set[_Job] = set()
        self._closed = False

    def fetchnumpy(self, sql: str) -> dict[str, Any]:
        """The query's result columns; raises :class:`FilterTimeout` past the budget,
        :class:`BusyError` when no turn came within it, and DuckDB's own errors."""
        timeout = self.budget.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = None if timeout is None else min(timeout, _SLOT_WAIT_S)
        if not self._slots.acquire(timeout=wait):
            raise BusyError(
                f"{self.budget.max_concurrent} slow filters are running on this collection; "
                "try again later"
            )
        try:
            job = self._start(sql)
        except BaseException:
            self._slots.release()
            raise
        try:
            while not job.done.wait(_wait_step(deadline)):
                if deadline is not None and time.monotonic() >= deadline:
                    job.cancel()
                    raise FilterTimeout(
                        f"the filter did not finish within its {timeout:g} s time budget"
                    )
        except KeyboardInterrupt:
            job.cancel()
            job.done.wait(_CTRL_C_GRACE_S)
            raise
        if job.error is not None:
            raise job.error
        return job.result

    def _start(self, sql: str) -> _Job:
        with self._lock:
            if self._closed:
                raise QueryError("this metadata filter was closed")
            cursor = self._idle.pop() if self._idle else self._con.cursor()
            job = _Job(cursor, sql)
            self._jobs.add(job)
        thread = threading.Thread(target=self._work, args=(job,), name="vlmsearch-filter")
        thread.daemon = True  # Ctrl-C exits without waiting for DuckDB to notice
        thread.start()
        return job

    def _work(self, job: _Job) -> None:
        try:
            job.run()
        finally:
            with job.lock:
                job.finished = True
            with self._lock:
                self._jobs.discard(job)
                if self._closed:
                    job.cursor.close()
                    if not self._jobs:
                        self._con.close()
                else:
                    self._idle.append(job.cursor)
            self._slots.release()
            job.done.set()

    def close(self) -> None:
        """Close the connection now, or when the last running query has stopped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for cursor in self._idle:
                cursor.close()
            self._idle.clear()
            running = list(self._jobs)
            if not running:
                self._con.close()
        for job in running:
            job.cancel()


def _wait_step(deadline: float | None) -> float:
    """Short waits, so that the main thread notices Ctrl-C promptly."""
    if deadline is None:
        return 0.1
    return max(0.0, min(0.1, deadline - time.monotonic()))


_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def describe_error(e: Exception) -> str:
    """DuckDB's message in one line, without the values it quotes: a conversion error
    quotes the value it could not convert, and that must not carry server data (a
    setting, a path) back to an HTTP client."""
    import duckdb

    if isinstance(e, duckdb.OutOfMemoryException):
        return "the filter needs more memory than its budget"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    if not isinstance(e, duckdb.BinderException):
        msg = _QUOTED.sub("'...'", msg)
    return msg[:300]
