"""The served collections: loaded once, swapped whole when their manifest changes.

A request takes the current :class:`~vlmsearch.collection.Collection` object and uses it to
the end; a newer commit is loaded into a *new* object beside it and swapped in by one
reference assignment. Nothing a request reads is mutated under it, and since the vectors
and index are loaded eagerly, a writer's garbage collection of old files cannot pull
them away mid-request. Encoders are shared across generations and wrapped so that a
collection's model calls run one at a time, fairly (see :mod:`.scheduling`); collections
do not wait for each other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from vlmsearch.collection import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.server.scheduling import FairLock, SerialEncoder
from vlmsearch.storage import metadata
from vlmsearch.storage.filter_budget import FilterBudget
from vlmsearch.storage.layout import Layout

log = logging.getLogger("vlmsearch.server")

# Distinct values listed for a text column's filter (a drop-down); more and it is free text.
MAX_FACET_VALUES = 50


def _stamp(layout: Layout) -> tuple[int, int, int] | None:
    """Identity of the manifest file: the atomic rename gives every commit a new inode."""
    try:
        st = os.stat(layout.manifest_path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ServedCollection:
    """One collection as the server sees it: the latest committed state, reloaded on change."""

    def __init__(
        self, name: str, path: Path, device: str | None, filter_budget: FilterBudget | None = None
    ) -> None:
        self.name = name
        self.filter_budget = filter_budget
        self.layout = Layout(path)
        self.device = device
        self.model_lock = FairLock()  # this collection's model only
        self._reload_lock = threading.Lock()
        self._encoder: Any = None
        self._stamp: tuple[int, int, int] | None = None
        self.reload_error: str | None = None
        self.reloads = 0
        self._coll: Collection | None = None
        self._failed_stamp: tuple[int, int, int] | None = None
        self._facets: tuple[int, dict[str, Any]] | None = None
        try:
            self._coll = self._load()
        except CollectionError as e:
            if not self.layout.exists():
                raise  # no collection there at all: a mistake in the command line
            self._unavailable(e)  # damaged: served as unavailable, the server starts

    @property
    def available(self) -> bool:
        return self._coll is not None

    def _unavailable(self, e: CollectionError) -> None:
        self._failed_stamp = _stamp(self.layout)
        path = getattr(e.__cause__ or e, "path", None)
        problem = getattr(e.__cause__ or e, "problem", None)
        # the reason without server paths: the file's name and what is wrong with it
        self.reload_error = (
            f"damaged file {path.name}: {problem}; run `vlmsearch check --repair` on the server"
            if path is not None and problem
            else "the collection cannot be loaded (see the server log)"
        )
        log.error("%s: unavailable: %s", self.name, e)

    def _retry(self) -> Collection:
        """An unavailable collection is loaded again once its manifest changes (a repair
        commits a new one); until then every request gets the reason, status 503."""
        stamp = _stamp(self.layout)
        if stamp != self._failed_stamp and self._reload_lock.acquire(False):
            try:
                self._coll = self._load()
                self.reload_error = None
            except CollectionError as e:
                self._unavailable(e)
            finally:
                self._reload_lock.release()
        if self._coll is None:
            raise CollectionUnavailable(
                f"collection {self.name!r} is unavailable: {self.reload_error}"
            )
        return self._coll

    def _load(self) -> Collection:
        last: Exception | None = None
        for attempt in range(5):  # a writer may delete an older generation while we read it
            stamp = _stamp(self.layout)
            try:
                coll = Collection(self.layout, device=self.device)
                coll.read_only = True  # the server never commits (thumbnails aside)
                coll.filter_budget = self.filter_budget  # before anything filters
                enc = self._encoder
                if enc is None or Encoder.identity(enc.spec) != Encoder.identity(
                    coll.manifest["encoder"]
                ):
                    enc = SerialEncoder(coll.encoder, self.model_lock)
                coll.use_encoder(enc)  # type: ignore[arg-type]
                if len(coll):
                    coll.vectors  # noqa: B018  (loaded now, not lazily mid-request)
                    coll.faiss_index  # noqa: B018
                self._encoder, self._stamp = enc, stamp
                return coll
            except (OSError, CollectionError, ValueError, KeyError) as e:
                last = e
                time.sleep(0.05 * (attempt + 1))
        raise CollectionError(f"cannot load collection {self.layout.path}: {last}") from last

    def current(self) -> Collection:
        """The latest committed state; a changed manifest is loaded first (one thread
        loads, the others keep answering from the previous state meanwhile)."""
        if self._coll is None:
            return self._retry()
        stamp = _stamp(self.layout)
        if stamp is not None and stamp != self._stamp and self._reload_lock.acquire(False):
            try:
                if _stamp(self.layout) != self._stamp:
                    self._coll = self._load()
                    self.reloads += 1
                    self.reload_error = None
            except CollectionError as e:
                self.reload_error = str(e)
                log.warning("%s: keeping generation %s: %s", self.name, self.generation, e)
            finally:
                self._reload_lock.release()
        return self._coll

    def needs_reload(self) -> bool:
        stamp = _stamp(self.layout)
        return stamp is not None and stamp != self._stamp

    @property
    def loaded(self) -> Collection:
        """The state loaded last, without looking for a newer one."""
        return self._coll

    @property
    def generation(self) -> int:
        return int(self._coll.manifest.get("generation", 0)) if self._coll is not None else -1

    def facets(self) -> dict[str, Any]:
        """Metadata columns for filters: type, and for text columns with few distinct
        values the values themselves (computed once per generation)."""
        coll = self.current()
        gen = int(coll.manifest.get("generation", 0))
        if self._facets is not None and self._facets[0] == gen:
            return self._facets[1]
        import pyarrow as pa

        hidden = {"content_hash", "status", "error", "mtime_ns"}
        reader = coll.reader
        types = {
            name: kind
            for name, kind in reader.column_types().items()
            if name not in hidden and not name.endswith("_settings")
        }
        # SQL aggregates over the 'ok' rows, never the whole table in Python (in place, at
        # 10M rows, that is gigabytes): one query for the row count, the numbers' ranges
        # and the text columns' distinct counts, then the values of the few-valued ones
        numbers = [n for n, t in types.items() if pa.types.is_integer(t) or pa.types.is_floating(t)]
        texts = [
            n
            for n, t in types.items()
            if (pa.types.is_string(t) or pa.types.is_large_string(t)) and n != "path"
        ]
        aggregates = ["count(*)"]
        for n in numbers:
            q = metadata.quote_name(n)
            if pa.types.is_floating(types[n]):
                # NaN left out unless there is nothing else, as Arrow's min_max does
                aggregates += [
                    f"coalesce(min({q}) FILTER (WHERE NOT isnan({q})), min({q}))",
                    f"coalesce(max({q}) FILTER (WHERE NOT isnan({q})), max({q}))",
                ]
            else:
                aggregates += [f"min({q})", f"max({q})"]
        aggregates += [f"count(DISTINCT {metadata.quote_name(n)})" for n in texts]
        mf = reader.metadata_filter()
        ok = f"FROM {metadata.TABLE_NAME} WHERE status = 'ok'"
        sql = "SELECT " + ", ".join(f"{a} AS a{i}" for i, a in enumerate(aggregates)) + f" {ok}"
        got = mf.select(sql)
        found = [got.column(i)[0].as_py() for i in range(got.num_columns)]
        rows = int(found[0])
        ranges = {n: (found[1 + 2 * i], found[2 + 2 * i]) for i, n in enumerate(numbers)}
        distinct = {n: int(found[1 + 2 * len(numbers) + i]) for i, n in enumerate(texts)}
        cols: dict[str, Any] = {}
        for name, kind in types.items():
            entry: dict[str, Any] = {"type": str(kind)}
            if name in ranges:
                entry["kind"] = "number"
                if rows:
                    entry["min"], entry["max"] = ranges[name]
            elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
                entry["kind"] = "text"
                if name in distinct and distinct[name] <= MAX_FACET_VALUES:
                    q = metadata.quote_name(name)
                    values = mf.select(f"SELECT DISTINCT {q} AS v {ok} AND {q} IS NOT NULL")
                    entry["values"] = sorted(values["v"].to_pylist())
            else:
                entry["kind"] = "other"
            cols[name] = entry
        self._facets = (gen, cols)
        return cols


class Registry:
    """Every served collection by URL name."""

    def __init__(
        self,
        collections: dict[str, Path],
        device: str | None = None,
        filter_budget: FilterBudget | None = None,
    ) -> None:
        # a reranker runs its own models and keeps a cache shared by all collections
        self.rerank_lock = FairLock()
        self.items = {
            name: ServedCollection(name, path, device, filter_budget)
            for name, path in collections.items()
        }

    def get(self, name: str) -> ServedCollection:
        try:
            return self.items[name]
        except KeyError:
            known = ", ".join(sorted(self.items)) or "none"
            raise UnknownCollection(f"no collection named {name!r} (served: {known})") from None


class UnknownCollection(CollectionError):
    """A request named a collection this server does not serve."""


class CollectionUnavailable(CollectionError):
    """A served collection that cannot be loaded now (damaged files)."""
