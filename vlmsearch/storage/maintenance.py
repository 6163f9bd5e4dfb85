"""``vlmsearch compact``: one commit that compacts a collection's metadata (see
:mod:`vlmsearch.storage.compact`) under the writer lock."""

from __future__ import annotations

from typing import Any

from vlmsearch.storage import compact, segments
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.store import CollectionWriter


def compact_collection(layout: Layout, force: bool = False) -> dict[str, Any]:
    """Compact when the threshold is passed (or ``force``); returns what was done: the
    metadata files before and after, and whether a commit was made. A format-1
    collection is migrated by it."""
    with layout.lock():
        manifest = layout.read_manifest()
        before = len(segments.metadata_files(manifest))
        report = {"compacted": False, "files_before": before, "files_after": before}
        if not (force or compact.needs_compaction(manifest)):
            return report
        writer = CollectionWriter(layout, manifest, table=None)
        writer.previous = manifest
        writer.migrate()  # format 1: migrated first
        writer.commit(data_changed=False, compact=True)
        after = len(segments.metadata_files(writer.manifest))
        return {**report, "compacted": True, "files_after": after}


def compact_if_due(writer: CollectionWriter) -> bool:
    """After an index run: compact (one more commit) when the threshold is passed."""
    if not compact.needs_compaction(writer.manifest):
        return False
    writer.commit(data_changed=False, compact=True)
    return True
