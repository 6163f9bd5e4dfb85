"""A vlmsearch collection on disk made from synthetic vectors, for the search benchmarks.

The vectors are a Gaussian mixture with low-dimensional noise (:func:`subspace_mixture`),
rounded to float16 as a real collection stores them. The metadata is one Parquet row per vector
with the base columns filled in plausibly: ``width`` is uniform on [200, 2000), so
``width >= 1982`` keeps 1% of the rows, independently of the vectors' clusters.
Everything is written through vlmsearch's own writer (``CollectionWriter``), so the
collection opens with :meth:`vlmsearch.Collection.open` like an indexed folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

WIDTH_LO, WIDTH_HI = 200, 2000
ONE_PERCENT_WHERE = "width >= 1982"  # 18 of the 1800 widths: 1.0% of the rows


def where_for_fraction(fraction: float) -> str:
    """A ``width >= W`` filter keeping ``fraction`` of the rows (widths are uniform)."""
    span = WIDTH_HI - WIDTH_LO
    keep = max(1, round(span * fraction))
    return f"width >= {WIDTH_HI - keep}"


def subspace_mixture(
    n: int, d: int, clusters: int, noise: float, subspace: int, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian mixture whose noise lies in a random ``subspace``-dim subspace per cluster.

    Random unit centres plus Gaussian noise of expected norm ``noise`` spanning ``subspace``
    random directions of that cluster, then L2-normalised; float32 (n, d). Isotropic noise
    in 512 dimensions (``bench_core.clustered_vectors``) makes every cluster a thin shell
    whose top-10 lies in one IVF list, so ANN recall is trivially 1.0; a low intrinsic
    dimension with few, wide clusters spreads the neighbours over many lists, and recall
    then depends on nprobe/efSearch as it does on real embeddings."""
    return draw_mixture(n, mixture_structure(d, clusters, subspace, rng), noise, rng)


def mixture_structure(
    d: int, clusters: int, subspace: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unit centres (clusters, d) and one orthonormal (subspace, d) noise basis each."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = []
    for _ in range(clusters):
        basis, _ = np.linalg.qr(rng.standard_normal((d, subspace)))
        bases.append(basis.T.astype(np.float32))
    return centres, bases


def draw_mixture(
    n: int,
    structure: tuple[np.ndarray, list[np.ndarray]],
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n`` normalised draws from a :func:`mixture_structure`; float32 (n, d)."""
    centres, bases = structure
    subspace = bases[0].shape[0]
    labels = rng.integers(0, len(centres), n)
    x = np.empty((n, centres.shape[1]), np.float32)
    scale = noise / np.sqrt(subspace)
    for c, basis in enumerate(bases):
        rows = np.flatnonzero(labels == c)
        for lo in range(0, len(rows), 65536):
            part = rows[lo : lo + 65536]
            z = rng.standard_normal((len(part), subspace), dtype=np.float32) * scale
            x[part] = centres[c] + z @ basis
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# Up to this many rows the vectors are drawn in one piece (the files cached for the 1M
# figures stay byte-identical); above it, block by block.
CHUNKED_FROM = 2_000_000
CHUNK_ROWS = 1_000_000


def vectors_file(
    cache: Path, n: int, dim: int, clusters: int, noise: float, subspace: int, seed: int
) -> Path:
    return cache / f"mixture-n{n}-d{dim}-c{clusters}-s{noise:g}-sub{subspace}-seed{seed}.f16.npy"


def load_or_make_vectors(
    cache: Path, n: int, dim: int, clusters: int, noise: float, subspace: int, seed: int
) -> np.ndarray:
    """float16 (n, dim) :func:`subspace_mixture` vectors, cached as .npy (1 GB at 1M x 512)."""
    path = vectors_file(cache, n, dim, clusters, noise, subspace, seed)
    if path.is_file():
        return np.load(path, mmap_mode="r")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    rng = np.random.default_rng(seed)
    if n <= CHUNKED_FROM:
        x16 = subspace_mixture(n, dim, clusters, noise, subspace, rng).astype(np.float16)
        np.save(tmp, x16)
    else:
        # drawn in blocks into a memory-mapped file: 10M x 512 float32 would be 20 GB
        structure = mixture_structure(dim, clusters, subspace, rng)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(n, lo + CHUNK_ROWS)
            out[lo:hi] = draw_mixture(hi - lo, structure, noise, rng).astype(np.float16)
        out.flush()
        del out
    tmp.rename(path)
    return np.load(path, mmap_mode="r")


def metadata_table(n: int, seed: int) -> Any:
    """``n`` rows of the base metadata schema (ids 0..n-1, all status 'ok')."""
    import pyarrow as pa

    from vlmsearch.storage import metadata

    rng = np.random.default_rng(seed + 1)
    ids = np.arange(n, dtype=np.int64)
    width = rng.integers(WIDTH_LO, WIDTH_HI, n).astype(np.int32)
    height = (width * rng.uniform(0.5, 1.5, n)).astype(np.int32)
    now = np.datetime64("2026-11-22T00:00:00", "us")
    cols = {
        "id": pa.array(ids),
        "path": pa.array([f"img/{i // 1000:04d}/{i:08d}.jpg" for i in range(n)]),
        "path_bytes": pa.nulls(n, pa.binary()),
        "size": pa.array(rng.integers(20_000, 4_000_000, n)),
        "mtime_ns": pa.array(np.full(n, 1_700_000_000 * 10**9, np.int64)),
        "content_hash": pa.array([f"{i:016x}" for i in range(n)]),
        "width": pa.array(width),
        "height": pa.array(height),
        "format": pa.array(["JPEG"] * n),
        "status": pa.array(["ok"] * n),
        "error": pa.nulls(n, pa.string()),
        "indexed_at": pa.array(np.full(n, now), pa.timestamp("us", tz="UTC")),
    }
    return pa.table(cols, schema=metadata.BASE_SCHEMA)


def write_collection(
    path: Path,
    vectors16: np.ndarray,
    encoder_spec: dict[str, Any] | None = None,
    seed: int = 0,
    shard_rows: int = 250_000,
) -> dict[str, float]:
    """Write a collection of ``vectors16`` (ids 0..n-1) without an index; returns timings.

    ``encoder_spec``: the manifest's encoder (a real encoder's ``spec`` for text queries
    from the CLI; a placeholder otherwise, when queries are given as vectors)."""
    from vlmsearch.ingest.manifest import new_manifest
    from vlmsearch.ingest.options import IngestOptions
    from vlmsearch.storage.layout import Layout
    from vlmsearch.storage.store import CollectionWriter
    from vlmsearch.storage.vectors import write_shard

    n, dim = vectors16.shape
    spec = encoder_spec or {"kind": "synthetic", "name": "synthetic (vectors given)"}
    enc = SimpleNamespace(spec=spec, dim=dim, sparse_output=False)
    layout = Layout(path)
    layout.prepare()
    manifest = new_manifest(path / "images", enc, IngestOptions())  # type: ignore[arg-type]
    t = time.perf_counter()
    table = metadata_table(n, seed)
    t_meta = time.perf_counter() - t
    writer = CollectionWriter(layout, manifest, table)
    t = time.perf_counter()
    # several shards, as an incremental ingest writes them; the writer names them by generation
    names = []
    for s, lo in enumerate(range(0, n, shard_rows)):
        hi = min(n, lo + shard_rows)
        name = f"shard-{s + 1:06d}"
        write_shard(layout.vectors_dir, name, np.arange(lo, hi, dtype=np.int64), vectors16[lo:hi])
        names.append(name)
    writer.manifest["shards"] = names
    writer.manifest["next_id"] = n
    writer.commit()
    return {"metadata_s": round(t_meta, 3), "write_s": round(time.perf_counter() - t, 3)}


def commit_index(path: Path, index: Any, plan: Any) -> float:
    """Store ``index`` (built from ``plan``) as the collection's current index; seconds."""
    from vlmsearch.storage.layout import Layout
    from vlmsearch.storage.store import CollectionWriter

    layout = Layout(path)
    m = layout.read_manifest()
    t = time.perf_counter()
    writer = CollectionWriter(layout, m)  # no metadata change: the index alone is committed
    writer.previous = m
    info = {**plan.to_json(), "ntotal": int(index.ntotal), "dim": int(index.d)}
    writer.commit(index=index, index_info=info, data_changed=False)
    return time.perf_counter() - t
