"""Dataset containers whose items are indexed one by one: webdataset tar shards,
Parquet files with an image column, and video files whose items are sampled frames
(``--video``; one module each, registered here by suffix).

An item inside a container has the relative path ``CONTAINER/MEMBER`` (``00000.tar/
000000012.jpg``, ``train-0001.parquet/000000012``), so every stage that reads an indexed
image by path (decoding, content hashes, rerankers, captions, the server) reads members
the same way it reads files: :func:`vlmsearch.imaging.file_read.read_image_file` sees
that a leading part of the path is a regular file, not a folder, and asks the container.
The size of an item is its member's byte size; its mtime is the container's, so an
unchanged shard is unchanged item by item, and a rewritten one is compared by content.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from vlmsearch.imaging.scan import ScannedFile
from vlmsearch.imaging.sources.sidecars import folder_sidecars


@dataclass(frozen=True)
class SourceOptions:
    """How containers are read. ``image_column``: the Parquet column holding the image
    (bytes, a ``{bytes, path}`` struct, or a path string); None picks the first binary or
    image-struct column. ``image_base``: the folder that path strings are relative to
    (default: the Parquet file's folder). ``video*``: see the fields."""

    image_column: str | None = None
    image_base: str | None = None
    # videos (sources/video.py): scanned only when ``video``; a frame every
    # ``video_interval`` seconds plus scene changes; sampled timestamps cached in
    # ``video_cache`` (a folder of the collection), None: not cached
    video: bool = False
    video_interval: float | None = None
    video_cache: str | None = None


class Source(Protocol):
    suffixes: tuple[str, ...]

    def items(
        self,
        path: str,
        rel: str,
        st: os.stat_result,
        opts: SourceOptions,
        explicit: bool,
        on_error: Callable[[str, str], None],
    ) -> Iterator[ScannedFile]:
        """The items of the container at ``path`` (``rel`` from the scan root). A file
        that is not a dataset of this kind yields nothing, unless ``explicit`` (named by
        the user), when ``on_error(rel, message)`` says why; so does a damaged one."""
        ...

    def read(self, path: str, member: str, max_bytes: int) -> bytes:
        """The image bytes of ``member``; OSError with a readable ``strerror`` if absent."""
        ...

    def extras(self, path: str, member: str, sidecars: tuple[str, ...]) -> dict[str, Any]:
        """The caption and fields stored beside ``member`` (sidecar members)."""
        ...


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> None:
    for suffix in source.suffixes:
        _REGISTRY[suffix] = source


def source_for(name: str) -> Source | None:
    """The registered source of a file name, by suffix (case-insensitive)."""
    _load_builtin()
    lower = name.lower()
    return next((s for suf, s in _REGISTRY.items() if lower.endswith(suf)), None)


def suffixes() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from vlmsearch.imaging.sources import parquet_images, video, webdataset

        register(webdataset.WebDataset())
        register(parquet_images.ParquetImages())
        register(video.Video())


def configure(root: str, opts: SourceOptions) -> None:
    """Tell readers in this process how the containers under ``root`` were indexed (the
    manifest's ``sources`` entry): decoding workers, rerankers and the server read
    members by path alone."""
    from vlmsearch.imaging.sources import parquet_images

    parquet_images.configure(root, opts)


def split_member(path: str) -> tuple[str, str, Source] | None:
    """(container path, member, its source) when a leading part of ``path`` is a regular
    file of a registered kind; None otherwise."""
    parts = path.split("/")
    for n in range(1, len(parts)):
        head = "/".join(parts[:n])
        src = source_for(parts[n - 1]) if head else None
        if src is None:
            continue
        try:
            st = os.stat(head)
        except OSError:
            return None
        if stat.S_ISREG(st.st_mode):
            return head, "/".join(parts[n:]), src
        if not stat.S_ISDIR(st.st_mode):
            return None
    return None


def read_member(path: str, max_bytes: int) -> bytes:
    """The bytes of the item at ``path`` (``…/container/member``); OSError (ENOTDIR) when
    no leading part of it is a container."""
    found = split_member(os.fspath(path))
    if found is None:
        raise OSError(errno.ENOTDIR, "not a directory", path)
    container, member, src = found
    return src.read(container, member, max_bytes)


def read_extras(root: str, f: ScannedFile) -> dict[str, Any]:
    """The caption and fields of a scanned item: inline ones (Parquet rows), or those read
    from its sidecars (``key.txt``, ``key.json`` beside an image, in a folder or a tar)."""
    if isinstance(f.extra, dict):
        return dict(f.extra)
    if not f.extra:
        return {}
    found = split_member(os.path.join(root, f.path))
    if found is not None:
        container, member, src = found
        return src.extras(container, member, f.extra)
    return folder_sidecars(os.path.join(root, f.path), f.extra)


def iter_containers(
    root: str,
    rel: str,
    st: os.stat_result,
    opts: SourceOptions,
    explicit: bool,
    on_error: Callable[[str, str], None],
) -> Iterator[ScannedFile] | None:
    """The items of ``rel`` when it is a registered container; None when it is not one."""
    src = source_for(rel)
    if src is None:
        return None
    return src.items(os.path.join(root, rel), rel, st, opts, explicit, on_error)
