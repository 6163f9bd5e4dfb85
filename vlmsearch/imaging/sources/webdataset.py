"""webdataset tar shards (img2dataset's ``webdataset`` output): ``key.jpg`` with
``key.txt`` (the caption) and ``key.json`` (fields), grouped by key.

A key is the member name up to the first dot of its base name (webdataset's rule), so
``a/000000012.jpg`` and ``a/000000012.txt`` belong together. Reading a member seeks to
its data: the offsets come from one pass over the shard's headers, kept per process for
the shards read last (the scan fills it, and decoding workers forked after the scan
inherit it).
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from vlmsearch.imaging.scan import DEFAULT_EXTENSIONS, ScannedFile
from vlmsearch.imaging.sources.sidecars import MAX_SIDECAR_BYTES, sidecar_fields

Members = dict[str, tuple[int, int]]  # member name -> (data offset, size)
_CACHE: OrderedDict[tuple[str, int, int], tuple[Members, str | None]] = OrderedDict()
_CACHE_SHARDS = 256  # shards whose member offsets are kept per process


def _key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: split at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def members(path: str) -> tuple[Members, str | None]:
    """The shard's regular members with their data offsets, and why the listing stopped
    early (a truncated or damaged shard), or None."""
    st = os.stat(path)
    ident = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(ident)
    if hit is not None:
        _CACHE.move_to_end(ident)
        return hit
    found: Members = {}
    problem = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                m = tar.next()
                if m is None:
                    break
                if m.isreg():
                    found[m.name.removeprefix("./")] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError) as e:
        problem = f"damaged or truncated tar after {len(found)} members ({e})"
    _CACHE[ident] = (found, problem)
    while len(_CACHE) > _CACHE_SHARDS:
        _CACHE.popitem(last=False)
    return found, problem


class WebDataset:
    suffixes = (".tar",)

    def items(
        self,
        path: str,
        rel: str,
        st: os.stat_result,
        opts: Any,
        explicit: bool,
        on_error: Callable[[str, str], None],
    ) -> Iterator[ScannedFile]:
        found, problem = members(path)
        if problem:
            on_error(rel, problem)
        groups: dict[str, dict[str, str]] = {}
        for name in found:
            key, ext = _key(name)
            groups.setdefault(key, {})[ext] = name
        for key in sorted(groups):
            exts = groups[key]
            image = next((exts[e] for e in DEFAULT_EXTENSIONS if e in exts), None)
            side = tuple(exts[e] for e in (".txt", ".json") if e in exts) or None
            if image is None and side is None:
                continue  # some other file kept in the shard (e.g. a .cls label only)
            if image is None:  # a caption without its image: an error row for the key
                yield ScannedFile(f"{rel}/{key}", 0, st.st_mtime_ns, side)
                continue
            yield ScannedFile(f"{rel}/{image}", found[image][1], st.st_mtime_ns, side)

    def read(self, path: str, member: str, max_bytes: int) -> bytes:
        found, _ = members(path)
        where = found.get(member)
        if where is None:
            key, _ = _key(member)
            raise OSError(f"no image for key {key!r} in {os.path.basename(path)}")
        return _read_at(path, *where, max_bytes)

    def extras(self, path: str, member: str, sidecars: tuple[str, ...]) -> dict[str, Any]:
        found, _ = members(path)
        texts = {}
        for name in sidecars:
            if name in found:
                try:
                    texts[name] = _read_at(path, *found[name], MAX_SIDECAR_BYTES)
                except OSError:
                    continue
        return sidecar_fields(texts)


def _read_at(path: str, offset: int, size: int, max_bytes: int) -> bytes:
    if size > max_bytes:
        raise OSError(f"member is over the {max_bytes}-byte limit ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) < size:
        raise OSError(f"truncated in the shard ({len(data)} of {size} bytes)")
    return data
