"""The scan and diff stage of an index run: which files are new, changed, deleted, or
only re-dated, compared with the committed metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from vlmsearch import names
from vlmsearch.errors import CollectionError
from vlmsearch.imaging import sources
from vlmsearch.imaging.decode import DecodeTask
from vlmsearch.imaging.scan import ScanError, ScannedFile, is_under, scan
from vlmsearch.imaging.sources.video import set_progress
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.ingest.touched import same_bytes
from vlmsearch.storage.store import CollectionWriter

VIDEO_CACHE = "video-frames"  # the collection's folder of sampled frame lists, per video


@dataclass
class Changes:
    """What the scan found to do: ``tasks`` to decode and encode, with ``info`` (id,
    ScannedFile, already indexed) for each; the ids of deleted files (``gone``); files only
    re-dated, same bytes with a new mtime (``touched``: {id: (size, mtime_ns)})."""

    tasks: list[DecodeTask] = field(default_factory=list)
    info: list[tuple[int, ScannedFile, bool]] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    touched: dict[int, tuple[int, int]] = field(default_factory=dict)
    root: str = ""  # the scan root, for reading sidecar fields when rows are made

    def add_task(
        self, root: Path, fid: int, f: ScannedFile, known: str | None, indexed: bool
    ) -> None:
        """Decode and encode ``f`` (with ``known``, its stored content hash, if any)."""
        self.tasks.append(DecodeTask(len(self.tasks), str(root / f.path), known))
        self.info.append((fid, f, indexed))


def find_changes(
    writer: CollectionWriter,
    root: Path,
    opts: IngestOptions,
    report: IngestReport,
    progress: ProgressFn | None,
) -> Changes:
    """Scan ``root`` and compare it with the writer's table. Deleted rows are dropped and
    re-dated ones updated in the writer's table, and new files get ids from ``next_id``;
    nothing is committed."""
    scanned, unknown = _scan(root, opts, writer.layout.path, report, progress)
    scan_table = _scan_table(scanned)
    view = writer.view
    changes = Changes(root=str(root))
    # rows under a folder that could not be listed are unknown this time, not deleted:
    # they keep their ids, vectors and labels
    gone = view.gone(scan_table)
    only = set(opts.only or ())
    changes.gone = [
        fid
        for fid, p in zip(gone["id"].to_pylist(), names.column_paths(gone), strict=True)
        if not is_under(p, unknown) and (not only or is_under(p, only))
    ]
    report.deleted = len(changes.gone)
    # only new files and those with another size or mtime come back from the join
    differ_rows = view.join_scan(scan_table).to_pylist()
    differ = {names.row_path(r): r for r in differ_rows}
    maybe_touched: list[tuple[int, ScannedFile, str]] = []  # (id, ScannedFile, stored hash)
    next_id = int(writer.manifest.get("next_id", 0))
    for f in scanned:  # in scan order: new files are numbered in it
        old = differ.get(f.path)
        if old is None:
            report.unchanged += 1
        elif old["id"] is None:
            changes.add_task(root, next_id, f, None, False)
            next_id += 1
            report.new += 1
        elif (known := old["content_hash"] if old["status"] == "ok" else None) and old[
            "old_size"
        ] == f.size:
            maybe_touched.append((old["id"], f, known))  # decided below, by content
        else:
            report.changed += 1
            changes.add_task(root, old["id"], f, known, True)
    changes.touched = _split_touched(root, maybe_touched, changes, report)
    writer.manifest["next_id"] = next_id
    if changes.touched:  # same bytes, new mtime: re-dated, not re-encoded
        writer.touch(changes.touched)
    if changes.gone:
        writer.delete(changes.gone)
    return changes


def _scan_table(scanned: list[ScannedFile]) -> pa.Table:
    """The scan as Arrow, in the metadata's path columns, for a join in DuckDB."""
    shown, raw = (
        zip(*(names.to_columns(f.path) for f in scanned), strict=True) if scanned else ((), ())
    )
    return pa.table(
        {
            "path": pa.array(shown, pa.string()),
            "path_bytes": pa.array(raw, pa.binary()),
            "size": pa.array([f.size for f in scanned], pa.int64()),
            "mtime_ns": pa.array([f.mtime_ns for f in scanned], pa.int64()),
        }
    )


def _scan(
    root: Path,
    opts: IngestOptions,
    collection: Path,
    report: IngestReport,
    progress: ProgressFn | None,
) -> tuple[list[ScannedFile], set[str]]:
    """The image files and dataset items under ``root`` (or under ``opts.only``), and the
    paths whose contents are unknown this time: folders that could not be listed and
    damaged containers (an unlistable ``root`` ends the run)."""
    problems: list[ScanError] = []
    src_opts = sources.SourceOptions(
        opts.image_column,
        opts.image_base,
        bool(opts.video),
        opts.video_interval,
        str(collection / VIDEO_CACHE),
    )

    def walk(folder: Path, prefix: str) -> list[ScannedFile]:
        """Scan ``folder`` (``prefix`` from the root); paths and problems from the root."""
        here: list[ScanError] = []

        def expand(base: str, rel: str, st: os.stat_result, explicit: bool = False):  # noqa: ANN202
            on_error = lambda r, m: here.append(ScanError(r, m))  # noqa: E731
            return sources.iter_containers(base, rel, st, src_opts, explicit, on_error)

        if folder.is_file():  # a container or an image named on the command line
            st = folder.stat()
            items = expand(str(folder.parent), folder.name, st, True)
            found = (
                list(items)
                if items is not None
                else [ScannedFile(folder.name, st.st_size, st.st_mtime_ns)]
            )
            prefix = prefix.rpartition("/")[0]
        else:
            found = list(
                scan(
                    folder,
                    opts.extensions,
                    opts.include_hidden,
                    exclude=[collection],
                    on_error=here.append,
                    expand=expand,
                )
            )
        problems.extend(
            ScanError(_join(prefix, p.path) if p.path != "." or not prefix else prefix, p.message)
            for p in here
        )
        return [_prefixed(prefix, f) for f in found] if prefix else found

    set_progress(progress)  # decoding videos to sample frames: the "video" phase
    try:
        if opts.only is None:
            scanned = walk(root, "")
        else:
            scanned = []
            for rel in opts.only:
                path = root / rel
                if not path.exists():
                    raise CollectionError(f"no such file or folder: {path}")
                scanned += walk(path, rel)
    finally:
        set_progress(None)
    for p in problems:
        if p.path == ".":
            raise CollectionError(f"{root}: {p.message}; the collection was left as it was")
        report.add_error(p.path, p.message)
    report.scanned = len(scanned)
    if progress:
        progress("scan", len(scanned), len(scanned))
    return scanned, {p.path for p in problems}


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _prefixed(prefix: str, f: ScannedFile) -> ScannedFile:
    extra = f.extra
    if isinstance(extra, dict) and "video_path" in extra:  # a frame names its video too
        extra = {**extra, "video_path": _join(prefix, extra["video_path"])}
    return ScannedFile(_join(prefix, f.path), f.size, f.mtime_ns, extra)


def _split_touched(
    root: Path,
    candidates: list[tuple[int, ScannedFile, str]],
    changes: Changes,
    report: IngestReport,
) -> dict[int, tuple[int, int]]:
    """Of the files with a new mtime but their old size, those with their old bytes are
    counted unchanged and returned ({id: (size, mtime_ns)}); the rest join the tasks as
    changed. Done before encoding, so that the encode total is what gets encoded."""
    same = same_bytes([(root / f.path, known) for _, f, known in candidates])
    touched: dict[int, tuple[int, int]] = {}
    for (fid, f, known), unchanged in zip(candidates, same, strict=True):
        if unchanged:
            touched[fid] = (f.size, f.mtime_ns)
            report.unchanged += 1
        else:
            report.changed += 1
            changes.add_task(root, fid, f, known, True)
    return touched
