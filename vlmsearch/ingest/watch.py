"""Watch mode: keep a collection current while files arrive, change or go.

Polling, not inotify: it works the same on every filesystem (network mounts, Docker
volumes, macOS), and a scan of sizes and mtimes is cheap next to encoding. Each time the
folder has changed *and then stayed the same for one interval* (so a file being copied
is not caught half-written), the ordinary incremental index run goes again
(:func:`~vlmsearch.ingest.indexing.index_folder`, or the ``index`` function given, such as
:meth:`Collection.index`).
Its commits are atomic (manifest swap), so readers -- a running ``vlmsearch serve`` --
never see a half-written state, and a watcher killed mid-update resumes from the last
checkpoint when restarted: nothing is lost or indexed twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vlmsearch.errors import CollectionError
from vlmsearch.imaging.scan import normalise_extensions, saved_extensions, scan
from vlmsearch.imaging.sources import video as video_source
from vlmsearch.ingest.indexing import index_folder
from vlmsearch.ingest.options import IngestOptions, IngestReport
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.storage.layout import Layout, default_collection_for

Snapshot = frozenset[tuple[str, int, int]]


class Indexed(Protocol):
    """What watching needs of an index run's result (a Collection qualifies)."""

    @property
    def last_report(self) -> IngestReport | None: ...

    @property
    def encoder(self) -> Encoder: ...


def snapshot(root: Path, layout: Layout, options: IngestOptions | None = None) -> Snapshot:
    """(path, size, mtime_ns) of every file an index run would consider: the run's own
    scan settings when given, else the collection's saved ones."""
    manifest = layout.read_manifest() if layout.exists() else {}
    saved = manifest.get("scan") or {}
    extensions = (options.extensions if options else None) or saved_extensions(
        saved.get("extensions")
    )
    hidden = bool(options.include_hidden if options else saved.get("include_hidden"))
    video = options.video if options and options.video is not None else None
    if video is None:
        video = (manifest.get("sources") or {}).get("video")
    if video:
        # a video's frames come and go with the file itself: watch the file
        extensions = normalise_extensions(extensions) + video_source.SUFFIXES
    files = scan(root, extensions, hidden, exclude=[layout.path])
    return frozenset((f.path, f.size, f.mtime_ns) for f in files)


def watch(
    root: str | Path,
    collection: str | Path | None = None,
    *,
    interval: float = 2.0,
    stop: threading.Event | None = None,
    on_report: Callable[[IngestReport], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
    index: Callable[..., Indexed] = index_folder,
    **index_args: Any,
) -> Indexed:
    """Index ``root`` now, then again whenever it changes, until ``stop`` is set (or
    KeyboardInterrupt); returns the last run's result.

    Args:
        root: the image folder.
        collection: where the collection is (default: ``root/.vlmsearch``).
        interval: seconds between looks at the folder.
        stop: set to end watching.
        on_report: called with each run's report.
        on_error: called with a run's error (a writer lock held by someone else, any
            other collection error); the run is retried next interval.
        index: the index function, called as ``index(root, collection, **index_args)``
            (:meth:`Collection.index` qualifies).
        index_args: for the first run; later runs reuse its encoder.
    """
    root_path = Path(root).expanduser()
    stop = stop or threading.Event()
    layout = Layout(collection or default_collection_for(root_path))
    options: IngestOptions = index_args.get("options") or IngestOptions()
    # taken before the run: a file that lands during the run is seen as a change
    seen = snapshot(root_path, layout, options)
    coll = index(root_path, collection, **index_args)
    if on_report and coll.last_report:
        on_report(coll.last_report)
    # later runs keep the collection's saved choices (index type, extensions)
    later = IngestOptions(**{**options.__dict__, "rebuild": False, "index": None})
    later.extensions = None
    pending: Snapshot | None = None
    while not stop.wait(interval):
        try:
            now = snapshot(root_path, layout)
            if now == seen:
                pending = None
                continue
            if now != pending:  # changed since the last look: let it settle one interval
                pending = now
                continue
            coll = index(
                root_path,
                layout.path,
                encoder=coll.encoder,
                options=later,
                progress=index_args.get("progress"),
                device=index_args.get("device"),
            )
            seen, pending = now, None
            if on_report and coll.last_report:
                on_report(coll.last_report)
        except (CollectionError, OSError) as e:
            if on_error:
                on_error(e)
    return coll
