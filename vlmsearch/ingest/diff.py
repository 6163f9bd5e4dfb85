"""The scan and diff stage of an index run: which files are new, changed, deleted, or
only re-dated, compared with the committed metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from vlmsearch import names
from vlmsearch.errors import CollectionError
from vlmsearch.imaging.decode import DecodeTask
from vlmsearch.imaging.scan import ScanError, ScannedFile, is_under, scan
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.ingest.touched import same_bytes
from vlmsearch.storage import metadata
from vlmsearch.storage.store import CollectionWriter


@dataclass
class Changes:
    """What the scan found to do: ``tasks`` to decode and encode, with ``info`` (id,
    ScannedFile, already indexed) for each; the ids of deleted files (``gone``); files only
    re-dated, same bytes with a new mtime (``touched``: {id: (size, mtime_ns)})."""

    tasks: list[DecodeTask] = field(default_factory=list)
    info: list[tuple[int, ScannedFile, bool]] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    touched: dict[int, tuple[int, int]] = field(default_factory=dict)

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
    table = writer.table
    old_rows = dict(
        zip(
            names.column_paths(table),  # OS form: the scan's names compare equal
            table.select(["id", "size", "mtime_ns", "content_hash", "status"]).to_pylist(),
            strict=True,
        )
    )
    scanned, unknown = _scan(root, opts, writer.layout.path, report, progress)
    seen = {f.path for f in scanned}
    changes = Changes()
    # rows under a folder that could not be listed are unknown this time, not deleted:
    # they keep their ids, vectors and labels
    changes.gone = [
        r["id"] for p, r in old_rows.items() if p not in seen and not is_under(p, unknown)
    ]
    report.deleted = len(changes.gone)
    maybe_touched: list[tuple[int, ScannedFile, str]] = []  # (id, ScannedFile, stored hash)
    next_id = int(writer.manifest.get("next_id", 0))
    for f in scanned:
        old = old_rows.get(f.path)
        if old is None:
            changes.add_task(root, next_id, f, None, False)
            next_id += 1
            report.new += 1
        elif old["size"] == f.size and old["mtime_ns"] == f.mtime_ns:
            report.unchanged += 1
        else:
            known = old["content_hash"] if old["status"] == "ok" else None
            if known and old["size"] == f.size:
                maybe_touched.append((old["id"], f, known))  # decided below, by content
                continue
            report.changed += 1
            changes.add_task(root, old["id"], f, known, True)
    changes.touched = _split_touched(root, maybe_touched, changes, report)
    writer.manifest["next_id"] = next_id
    if changes.touched:  # same bytes, new mtime: re-dated, not re-encoded
        writer.table = touch(writer.table, changes.touched)
    if changes.gone:
        writer.table = metadata.drop_ids(writer.table, changes.gone)
    return changes


def _scan(
    root: Path,
    opts: IngestOptions,
    collection: Path,
    report: IngestReport,
    progress: ProgressFn | None,
) -> tuple[list[ScannedFile], set[str]]:
    """The image files under ``root``, and the folders that could not be listed (an
    unlistable ``root`` ends the run)."""
    problems: list[ScanError] = []
    scanned = list(
        scan(
            root,
            opts.extensions,
            opts.include_hidden,
            exclude=[collection],
            on_error=problems.append,
        )
    )
    for p in problems:
        if p.path == ".":
            raise CollectionError(f"{root}: {p.message}; the collection was left as it was")
        report.add_error(p.path, p.message)
    report.scanned = len(scanned)
    if progress:
        progress("scan", len(scanned), len(scanned))
    return scanned, {p.path for p in problems}


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


def touch(table: pa.Table, touched: dict[int, tuple[int, int]]) -> pa.Table:
    """Update size/mtime of files whose bytes did not change (no re-encoding)."""
    ids = table["id"].to_numpy()
    size = table["size"].to_numpy().copy()
    mtime = table["mtime_ns"].to_numpy().copy()
    pos = {int(i): n for n, i in enumerate(ids)}
    for fid, (s, m) in touched.items():
        if fid in pos:
            size[pos[fid]], mtime[pos[fid]] = s, m
    table = table.set_column(table.column_names.index("size"), "size", pa.array(size))
    return table.set_column(table.column_names.index("mtime_ns"), "mtime_ns", pa.array(mtime))
