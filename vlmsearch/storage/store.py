"""Committing a collection's state: shard, metadata, index, then the manifest."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmsearch.storage import integrity, metadata
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.postings import PostingIndex
from vlmsearch.storage.column_vectors import TextVectors
from vlmsearch.storage.column_vectors import file_name as text_vectors_file
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.vectors import write_shard


class CollectionWriter:
    """Holds the collection state of one run and commits it generation by generation."""

    def __init__(self, layout: Layout, manifest: dict[str, Any], table: pa.Table) -> None:
        self.layout = layout
        self.manifest = manifest
        self.table = table
        self.previous: dict[str, Any] | None = None

    def commit(
        self,
        shard: tuple[np.ndarray, np.ndarray] | None = None,
        index: Any = None,
        index_info: dict[str, Any] | None = None,
        replace_shards: bool = False,
        data_changed: bool = True,
        text_vectors: dict[str, tuple[TextVectors, dict[str, Any]]] | None = None,
        student: tuple[Any, dict[str, Any]] | None = None,
    ) -> None:
        """Write the new files, then the manifest. ``data_changed`` marks commits that
        change which vectors are live (the index is current iff it is at least as new)."""
        m = dict(self.manifest)
        gen = int(m.get("generation", 0)) + 1
        m["generation"] = gen
        if data_changed:
            m["data_generation"] = gen
        if shard is not None and len(shard[0]):
            name = f"shard-{gen:06d}"
            write_shard(self.layout.vectors_dir, name, shard[0], shard[1])
            m["shards"] = ([] if replace_shards else list(m.get("shards", []))) + [name]
        meta_name = f"metadata-{gen:06d}.parquet"
        metadata.write_table(self.layout.file(meta_name), self.table)
        m["metadata_file"] = meta_name
        if index is not None and index_info is not None:
            if hasattr(index, "commit_as"):  # on-disk: storage/ann/ondisk_files.py
                files = index.commit_as(self.layout.path, gen)
            elif isinstance(index, PostingIndex):
                files = {"file": f"index-{gen:06d}.postings.npz"}
                index.write(self.layout.file(files["file"]))
            else:
                files = {"file": f"index-{gen:06d}.faiss"}
                faiss_store.write_index(index, self.layout.file(files["file"]))
            m["index"] = {**index_info, **files, "generation": gen}
        if text_vectors:
            entries = dict(m.get("text_vectors") or {})
            for column, (tv, info) in text_vectors.items():
                name = text_vectors_file(gen, column)
                tv.write(self.layout.file(name))
                entries[column] = {**info, "file": name, "rows": len(tv), "generation": gen}
            m["text_vectors"] = entries
        if student is not None:  # a RegionStudent and its manifest entry
            name = f"student-{gen:06d}.pt"
            student[0].save(self.layout.file(name))
            m["region_student"] = {**student[1], "file": name, "generation": gen}
        status = self.table["status"]
        ok = int(pc.sum(pc.equal(status, "ok")).as_py() or 0) if self.table.num_rows else 0
        m["counts"] = {"files": self.table.num_rows, "ok": ok, "error": self.table.num_rows - ok}
        integrity.record(self.layout.path, m)  # sizes and digests of every named file
        self.layout.write_manifest(m, self.previous)
        self.previous, self.manifest = self.manifest, m
