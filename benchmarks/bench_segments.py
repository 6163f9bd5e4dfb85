"""Cost of one 1,024-image checkpoint against the size of the collection: format 1 (the
whole metadata table upserted and rewritten) beside format 2 (one segment, tombstones,
the manifest).

A synthetic collection of N rows is written (benchmarks/synthetic_collection.py, small
vectors: only the metadata is measured), then one checkpoint of ``--batch`` rows, half of
them re-encoded files and half new, is committed, ``--repeat`` times. Reported per
checkpoint: bytes written (new files and the manifest) and seconds; then, in a fresh
process, what reading the metadata costs (open, first and warm 1% filter, 10 rows by id,
a path lookup, peak RSS).

    python benchmarks/bench_segments.py --rows 100000 1000000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_core import status_mb  # noqa: E402
from benchmarks.synthetic_collection import write_collection  # noqa: E402
from vlmsearch.storage import metadata  # noqa: E402
from vlmsearch.storage.layout import Layout  # noqa: E402
from vlmsearch.storage.store import CollectionWriter  # noqa: E402

DIM = 8


def _sizes(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def _batch_rows(start: int, batch: int, round_: int) -> list[dict[str, Any]]:
    base = {c: None for c in metadata.BASE_COLUMNS}
    replaced = np.arange(round_ * batch, round_ * batch + batch // 2)
    new = start + np.arange(batch - batch // 2)
    return [
        {**base, "id": int(i), "path": f"new/{i}.jpg", "size": 1, "mtime_ns": 1, "status": "ok"}
        for i in np.concatenate([replaced, new])
    ]


def format2_checkpoint(path: Path, batch: int, round_: int) -> tuple[int, float]:
    """One checkpoint through the format-2 writer: (bytes written, seconds)."""
    layout = Layout(path)
    with layout.lock():
        manifest = layout.read_manifest()
        before = _sizes(path)
        t = time.perf_counter()
        writer = CollectionWriter(layout, manifest)
        writer.previous = manifest
        start = int(manifest["next_id"])
        rows = _batch_rows(start, batch, round_)
        writer.upsert(rows)
        writer.manifest["next_id"] = start + batch - batch // 2
        ids = np.asarray([r["id"] for r in rows], np.int64)
        writer.commit(shard=(ids, np.zeros((len(ids), DIM), np.float16)))
        seconds = time.perf_counter() - t
    after = _sizes(path)
    manifest_path = str(layout.manifest_path)
    written = sum(s for n, s in after.items() if n not in before or n == manifest_path)
    return written, seconds


def format1_checkpoint(table: Any, path: Path, batch: int, round_: int) -> tuple[Any, int, float]:
    """What format 1 did per checkpoint with the table it held in memory: upsert the
    rows, rewrite the whole table (the shard and manifest, alike in both, are left out)."""
    start = int(table.num_rows) + round_ * (batch - batch // 2)
    rows = metadata.rows_to_table(_batch_rows(start, batch, round_))
    t = time.perf_counter()
    table = metadata.upsert(table, rows)
    out = path / f"metadata-{round_:06d}.parquet"
    metadata.write_table(out, table)
    seconds = time.perf_counter() - t
    size = out.stat().st_size
    out.unlink()
    return table, size, seconds


def read_figures(path: Path) -> dict[str, Any]:
    """Open a reader in this process and time what a query needs from the metadata: the
    open (the DuckDB copy or view), a 1% ``--where``, 10 rows by id, a path lookup."""
    from benchmarks.synthetic_collection import ONE_PERCENT_WHERE
    from vlmsearch.storage.reader import CollectionReader

    out: dict[str, Any] = {}
    t = time.perf_counter()
    reader = CollectionReader(Layout(path))
    f = reader.metadata_filter()
    out["open_s"] = round(time.perf_counter() - t, 3)
    out["in_place"] = f.in_place
    t = time.perf_counter()
    n = len(reader.filter_ids(ONE_PERCENT_WHERE))
    out["first_filter_s"], out["filter_rows"] = round(time.perf_counter() - t, 3), n
    t = time.perf_counter()
    reader.filter_ids(ONE_PERCENT_WHERE)
    out["warm_filter_s"] = round(time.perf_counter() - t, 3)
    n_rows = len(reader)
    ids = np.random.default_rng(1).choice(n_rows, 10, replace=False)
    t = time.perf_counter()
    assert len(reader.rows(ids)) == 10
    out["rows_10_ids_s"] = round(time.perf_counter() - t, 3)
    probe = f"img/{(n_rows // 2) // 1000:04d}/{n_rows // 2:08d}.jpg"
    t = time.perf_counter()
    found = f.select("SELECT id FROM metadata WHERE path = ?", [probe]).num_rows
    out["path_lookup_s"], out["path_found"] = round(time.perf_counter() - t, 3), found
    out["peak_rss_mb"] = round(status_mb("VmHWM"))
    return out


def _read_in_fresh_process(path: Path) -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, __file__, "--read", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_all(sizes: list[int], batch: int, repeat: int, workdir: Path, format1_max: int) -> list:
    """Every size's collection first, then the checkpoints interleaved across sizes
    (round r commits once to each), so that a busy disk or CPU weighs on every size
    alike; then the reads, then format 1."""
    paths = {}
    for n in sizes:
        paths[n] = workdir / f"c{n}"
        write_collection(paths[n], np.zeros((n, DIM), np.float16), shard_rows=max(n, 1))
    f2: dict[int, list[tuple[int, float]]] = {n: [] for n in sizes}
    for r in range(repeat):
        for n in sizes:
            f2[n].append(format2_checkpoint(paths[n], batch, r))
    results = []
    for n in sizes:
        res: dict[str, Any] = {
            "rows": n,
            "batch": batch,
            "format2_bytes": int(np.median([b for b, _ in f2[n]])),
            "format2_seconds": round(float(np.median([s for _, s in f2[n]])), 4),
            "format2_seconds_all": [round(s, 4) for _, s in f2[n]],
            "format2_reads": _read_in_fresh_process(paths[n]),
        }
        if n <= format1_max:
            t = time.perf_counter()
            layout = Layout(paths[n])
            table = CollectionWriter(layout, layout.read_manifest()).table
            res["format1_read_table_seconds"] = round(time.perf_counter() - t, 3)
            f1 = []
            for r in range(repeat):
                table, size, seconds = format1_checkpoint(table, workdir, batch, r)
                f1.append((size, seconds))
            del table
            res["format1_metadata_bytes"] = int(np.median([b for b, _ in f1]))
            res["format1_metadata_seconds"] = round(float(np.median([s for _, s in f1])), 4)
        shutil.rmtree(paths[n])
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--format1-max", type=int, default=4_000_000, help="largest size to run format 1 at"
    )
    ap.add_argument("--workdir", type=Path, help="where to write the collections (default: /tmp)")
    ap.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the fresh-process read phase
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.read:
        print(json.dumps(read_figures(args.read)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-segments-", dir=args.workdir) as tmp:
        results = run_all(args.rows, args.batch, args.repeat, Path(tmp), args.format1_max)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
