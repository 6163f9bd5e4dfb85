"""Near-duplicate images: groups of stored vectors whose cosine similarity reaches a
threshold, joined transitively (connected components), as clip-retrieval's back end
deduplicates results (cosine >= 0.94).

Pairs come from FAISS range searches, a block of query rows at a time, so no Python loop
runs over pairs of images and memory holds the index plus one block's results. Up to
:data:`EXACT_MAX` dense rows the index is exact (flat inner product, float32: every pair
is compared, ~1 min at 50k on 2 cores); above, an IVF index over float16 codes, trained
here, visits ``nprobe`` lists per row (about N * nprobe / sqrt(N) comparisons): duplicates
at cosine >= 0.9 nearly always share a list. Sparse (ASIF) rows are compared by sparse
products, a block of rows against all (exact; memory bounded by the block size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmsearch import names
from vlmsearch.errors import QueryError
from vlmsearch.results import Hit, ProgressFn
from vlmsearch.search.video_hits import TIME_COLUMN, VIDEO_COLUMN, describe
from vlmsearch.storage.reader import CollectionReader
from vlmsearch.storage.snapshot import on_one_commit

DEFAULT_THRESHOLD = 0.94  # clip_back's: closer than this is one image
EXACT_MAX = 50_000  # dense rows searched exactly (N^2 / 2 products); above, IVF
BLOCK = 4096  # query rows per range search
SPARSE_CELLS = 16_000_000  # sparse products: block rows x all rows at most
IVF_NPROBE = 8
IVF_TRAIN_PER_LIST = 16
IVF_NITER = 10

KeeperKey = Callable[[np.ndarray], dict[int, tuple[Any, ...]]]
"""Sort keys by id for the members of the groups (lowest first is kept)."""


@dataclass
class Group:
    """One set of near-duplicates: the suggested ``keeper`` and the ``others``, each with
    its cosine similarity to the keeper; ``paths`` by id when known, and ``frames``: the
    video and time of those that are video frames (``index --video``)."""

    keeper: int
    others: list[int]
    similarity: list[float]
    paths: dict[int, str] = field(default_factory=dict)
    frames: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [self.keeper, *self.others]

    def __len__(self) -> int:
        return 1 + len(self.others)

    def label(self, image_id: int) -> str:
        """How a member reads to a person: its path, or ``clip.mp4 @ 0:04.0`` for a frame."""
        path = self.paths.get(image_id, "")
        frame = self.frames.get(image_id)
        return (describe({**frame, "path": path}) if frame else None) or path

    def to_dict(self) -> dict[str, Any]:
        """The group for ``--json``: sizes, ids, paths and similarities to the keeper."""
        return {
            "size": len(self),
            "keeper": {"id": self.keeper, "path": self.paths.get(self.keeper)},
            "others": [
                {"id": i, "path": self.paths.get(i), "similarity": round(s, 6)}
                for i, s in zip(self.others, self.similarity, strict=True)
            ],
        }


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in (0, 1]: a cosine at or below 0 would join unrelated
    images, and none exceeds 1."""
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise QueryError(f"the duplicate threshold must lie in (0, 1] (got {threshold})")
    return t


@on_one_commit
def stored_duplicates(
    reader: CollectionReader,
    threshold: float = DEFAULT_THRESHOLD,
    where: str | None = None,
    progress: ProgressFn | None = None,
) -> list[Group]:
    """Near-duplicate groups among a collection's stored vectors (those ``where`` allows),
    each keeping the largest image (width x height), then the oldest file, then the lowest
    id; paths are filled in."""
    threshold = check_threshold(threshold)
    reader.require_vectors()
    allowed = reader.filter_ids(where) if where and where.strip() else None  # checks the SQL
    table = reader.vectors
    if allowed is None:
        ids, rows = table.ids, table.vectors
    else:
        from vlmsearch.search.vector_search import sorted_intersection

        ids = sorted_intersection(allowed, table.ids)
        rows = table.vectors[table.positions(ids)]

    def keeper_key(member_ids: np.ndarray) -> dict[int, tuple[Any, ...]]:
        return {i: _keeper_rank(r) for i, r in reader.rows(member_ids).items()}

    groups = find_duplicates(ids, rows, threshold, keeper_key=keeper_key, progress=progress)
    found = reader.rows(np.asarray([i for g in groups for i in g.ids], np.int64))
    for g in groups:
        g.paths = {i: str(reader.root / names.row_path(found[i])) for i in g.ids if i in found}
        g.frames = {i: _frame(found[i]) for i in g.ids if i in found and _frame(found[i])}
    return groups


def _frame(row: dict[str, Any]) -> dict[str, Any]:
    """The video columns of a frame's row; empty for an image."""
    if not isinstance(row.get(VIDEO_COLUMN), str) or row.get(TIME_COLUMN) is None:
        return {}
    return {VIDEO_COLUMN: row[VIDEO_COLUMN], TIME_COLUMN: row[TIME_COLUMN]}


def _keeper_rank(row: dict[str, Any]) -> tuple[Any, ...]:
    """Larger images first, then older files (the original is usually the first saved)."""
    area = (row.get("width") or 0) * (row.get("height") or 0)
    return (-area, row.get("mtime_ns") or 0)


def dedupe_threshold(dedupe: bool | float) -> float | None:
    """The threshold a ``dedupe`` argument asks for: None (off), the default for True, or
    the float given, checked."""
    if dedupe is False or dedupe is None:
        return None
    return DEFAULT_THRESHOLD if dedupe is True else check_threshold(dedupe)


def find_duplicates(
    ids: Sequence[int] | np.ndarray,
    vectors: Any,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    keeper_key: KeeperKey | None = None,
    progress: ProgressFn | None = None,
    exact_max: int = EXACT_MAX,
    nprobe: int = IVF_NPROBE,
) -> list[Group]:
    """Groups of near-duplicates among ``vectors`` (rows aligned with ``ids``: a float
    array, a float16 shard view or a CSR matrix), largest first, then by keeper id.

    Args:
        threshold: the cosine similarity at which two images are one (in (0, 1]).
        keeper_key: sort keys by id; each group keeps its lowest (default: lowest id).
        progress: called with ("duplicates", rows done now, total rows).
        exact_max, nprobe: above ``exact_max`` dense rows, an IVF index visiting ``nprobe``
            lists per row (approximate: a pair split over lists can be missed).
    """
    threshold = check_threshold(threshold)
    ids = np.asarray(ids, np.int64)
    if vectors.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids but {vectors.shape[0]} vectors")
    if len(ids) < 2:
        return []
    if hasattr(vectors, "tocsr"):
        a, b = _sparse_pairs(vectors, threshold, progress)
    else:
        a, b = _dense_pairs(vectors, threshold, progress, exact_max, nprobe)
    return _groups(ids, vectors, a, b, keeper_key)


def _normalised(rows: Any) -> np.ndarray:
    v = np.asarray(rows, np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


def _dense_index(vectors: Any, exact_max: int, nprobe: int) -> Any:
    """A FAISS inner-product index over the normalised rows: exact when small, else IVF
    over float16 codes (half the memory of float32), trained on a sample of the rows."""
    import faiss

    n, d = vectors.shape
    fp16 = faiss.ScalarQuantizer.QT_fp16
    ip = faiss.METRIC_INNER_PRODUCT
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)  # BLAS; the fp16 flat index scans pair by pair
    else:
        nlist = int(min(max(4 * np.sqrt(n), 64), n // IVF_TRAIN_PER_LIST))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, fp16, ip)
        index.cp.niter = IVF_NITER
        index.cp.min_points_per_centroid = IVF_TRAIN_PER_LIST  # no warning: by design
        sample = np.random.default_rng(0).choice(n, nlist * IVF_TRAIN_PER_LIST, replace=False)
        index.train(_normalised(vectors[np.sort(sample)]))
        index.nprobe = nprobe
    for lo in range(0, n, BLOCK * 8):
        index.add(_normalised(vectors[lo : lo + BLOCK * 8]))
    return index


def _dense_pairs(
    vectors: Any, threshold: float, progress: ProgressFn | None, exact_max: int, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) at cosine >= ``threshold``, from range searches a block at a time."""
    index = _dense_index(vectors, exact_max, nprobe)
    n = vectors.shape[0]
    # FAISS keeps an inner product strictly above the radius, which is lowered for the
    # rounding of float16 codes; the exact cosines below settle each pair
    radius = threshold - 2e-3
    found_a, found_b, found_s = [], [], []
    for lo in range(0, n, BLOCK):
        q = _normalised(vectors[lo : lo + BLOCK])
        lims, dist, labels = index.range_search(q, float(radius))
        rows = lo + np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        keep = labels > rows
        found_a.append(rows[keep])
        found_b.append(labels[keep])
        found_s.append(dist[keep])
        if progress is not None:
            progress("duplicates", len(q), n)
    a, b = np.concatenate(found_a), np.concatenate(found_b).astype(np.int64)
    # the codes' rounding is settled on the stored rows: exact float32 cosines
    if len(a):
        sims = _pair_cosines(vectors, a, b)
        a, b = a[sims >= threshold], b[sims >= threshold]
    return a, b


def _pair_cosines(vectors: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), np.float32)
    for lo in range(0, len(a), BLOCK * 16):
        sa, sb = a[lo : lo + BLOCK * 16], b[lo : lo + BLOCK * 16]
        out[lo : lo + len(sa)] = np.einsum(
            "ij,ij->i", _rows(vectors, sa), _rows(vectors, sb), dtype=np.float32
        )
    return out


def _rows(vectors: Any, positions: np.ndarray) -> np.ndarray:
    """Normalised float32 rows at ``positions`` (any order, repeats allowed)."""
    uniq, inv = np.unique(positions, return_inverse=True)
    got = vectors[uniq]
    got = got.toarray() if hasattr(got, "toarray") else got
    return _normalised(got)[inv]


def _sparse_pairs(
    vectors: Any, threshold: float, progress: ProgressFn | None
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b) at cosine >= ``threshold`` of a CSR matrix: a block of rows times
    all rows, at most :data:`SPARSE_CELLS` products held at once."""
    import scipy.sparse as sp

    x = vectors.tocsr().astype(np.float32)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sp.diags(1.0 / np.where(norms == 0, 1, norms)) @ x
    xt = x.T.tocsc()
    n = x.shape[0]
    block = max(1, SPARSE_CELLS // n)
    found_a, found_b = [], []
    for lo in range(0, n, block):
        prod = (x[lo : lo + block] @ xt).tocoo()
        rows = prod.row.astype(np.int64) + lo
        keep = (prod.data >= threshold) & (prod.col > rows)
        found_a.append(rows[keep])
        found_b.append(prod.col[keep].astype(np.int64))
        if progress is not None:
            progress("duplicates", min(block, n - lo), n)
    return np.concatenate(found_a), np.concatenate(found_b)


def _groups(
    ids: np.ndarray, vectors: Any, a: np.ndarray, b: np.ndarray, keeper_key: KeeperKey | None
) -> list[Group]:
    """Connected components of the pairs, as groups with a keeper and similarities."""
    components = connected(len(ids), a, b)
    groups = []
    members_of = _members(components)
    if not members_of:
        return []
    all_members = np.concatenate(members_of)
    keys = keeper_key(ids[all_members]) if keeper_key is not None else {}
    for members in members_of:
        member_ids = ids[members].tolist()
        order = sorted(
            range(len(members)), key=lambda k: (*keys.get(member_ids[k], ()), member_ids[k])
        )
        pos = members[order]
        sims = _rows(vectors, pos[1:]) @ _rows(vectors, pos[:1])[0]
        others = ids[pos[1:]].tolist()
        groups.append(Group(int(ids[pos[0]]), others, [min(float(s), 1.0) for s in sims]))
    groups.sort(key=lambda g: (-len(g), g.keeper))
    return groups


def connected(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` nodes joined by edges ``a[i]``-``b[i]``."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    graph = sp.coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _members(labels: np.ndarray) -> list[np.ndarray]:
    """Positions of each component with two members or more."""
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [order[starts[c] : starts[c + 1]] for c in np.nonzero(sizes >= 2)[0]]


def dedupe_hits(
    hits: list[Hit], vectors_of: Callable[[np.ndarray], Any], threshold: float = DEFAULT_THRESHOLD
) -> list[Hit]:
    """``hits`` without near-duplicates: hits whose stored vectors reach ``threshold`` are
    grouped (transitively) and each group keeps its best-ranked hit; ranks are renumbered.
    ``vectors_of(ids)`` gives the stored rows."""
    threshold = check_threshold(threshold)
    if len(hits) < 2:
        return hits
    v = _normalised_any(vectors_of(np.asarray([h.id for h in hits], np.int64)))
    a, b = np.nonzero(np.triu(v @ v.T >= threshold, 1))
    labels = connected(len(hits), a, b)
    _, first = np.unique(labels, return_index=True)
    kept = [hits[i] for i in np.sort(first)]
    for rank, h in enumerate(kept, start=1):
        h.rank = rank
    return kept


def _normalised_any(rows: Any) -> np.ndarray:
    return _normalised(rows.toarray() if hasattr(rows, "toarray") else rows)
