"""Choosing a FAISS index for a collection, and refusing requests that cannot work.

All indexes use inner product over L2-normalised vectors (cosine similarity).
The ``auto`` rule (sizes in vectors, ``budget`` = memory budget in bytes):

- n < 20,000: ``Flat``. Exact, and a scan of at most 20k x 512 floats (40 MB) per
  query batch is a few milliseconds.
- n < 200,000 and (4d + 8M) n fits the budget: ``HNSW32`` (efConstruction 80).
  Memory per vector is from the FAISS notes (4d + 8M).
- 4dn fits the budget: ``IVF{nlist},Flat`` with nlist = sqrt(n) rounded to a power of
  two. autofaiss uses 4 sqrt(n); on CPU, training and adding cost n * nlist * d, and at
  1M x 512 on 2 cores IVF4096 took 400 s to build against 58 s for IVF1024, which still
  answers in about 7 ms at recall@10 0.97 (benchmarks/RESULTS.md, issue 6).
- otherwise, or from :data:`ONDISK_MIN` vectors on, an **on-disk** IVF index
  (:mod:`vlmsearch.storage.ann.ondisk`: lists in a memory-mapped ``.ivfdata``) whose codes
  are sized to the budget, as autofaiss sizes its PQ codes: ``SQ8`` (d bytes a vector,
  recall close to IVF-Flat, no codebook to train) when the lists, n (d + 8) bytes, fit
  the budget, else ``PQ{d/8}x8`` or ``PQ{d/16}x8``, the first whose lists fit (the page
  cache can then hold every list; when none fits, lists are read from disk per query).
  OPQ is not used: its rotation is trained with 256-centroid PQs and took minutes on 2
  cores for a few points of recall. PQ training costs ~1.5 s per sub-quantizer there
  (so d/4 codes, 128 sub-quantizers, are never chosen).

The search defaults here (efSearch 128, nprobe nlist/16) are only for indexes built
without tuning (:mod:`vlmsearch.storage.ann.tune`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from vlmsearch.errors import QueryError
from vlmsearch.storage.ann.introspect import faiss_message, ivf_of
from vlmsearch.storage.ann.postings import FACTORY as POSTINGS

FLAT_MAX = 20_000
HNSW_MAX = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
# From here on an index lives on disk: at 2M x 512 an in-memory IVF-Flat is 4 GB of RAM
# in every process that opens it, read whole before the first query.
ONDISK_MIN = 2_000_000
ONDISK = "ondisk"
NAMED_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq", ONDISK)


@dataclass
class IndexPlan:
    """What ``--index`` asked for, the FAISS factory string built for it, its per-query
    search defaults, and why (all kept in the manifest)."""

    requested: str
    factory: str
    search_params: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    ondisk: bool = False  # lists in a memory-mapped .ivfdata (storage/ann/ondisk.py)

    @property
    def wrapped(self) -> bool:
        """Flat/HNSW codes carry no ids of their own and need an IDMap2 wrapper."""
        return not self.factory.startswith(("IVF", "OPQ", "PCA"))

    def to_json(self) -> dict[str, Any]:
        out = {
            "requested": self.requested,
            "factory": self.factory,
            "search_params": dict(self.search_params),
            "reason": self.reason,
        }
        if self.ondisk:
            out["storage"] = ONDISK
        return out


def default_memory_budget() -> int:
    """Half of physical memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _pow2(x: float) -> int:
    return max(1, 2 ** round(math.log2(max(x, 1.0))))


def _nlist(n: int) -> int:
    # sqrt(n) rounded to a power of two (see the module docstring for why not autofaiss's
    # 4 sqrt(n)); FAISS warns below 39 training points a list.
    nlist = _pow2(math.sqrt(max(n, 1)))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def _pq_m(d: int) -> int:
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def plan_index(requested: str, n: int, d: int, memory_budget: int | None = None) -> IndexPlan:
    """Turn ``--index`` into a FAISS factory string and per-query search defaults."""
    budget = memory_budget or default_memory_budget()
    req = (requested or "auto").strip()
    kind = req.lower()
    if kind == "auto":
        if n < FLAT_MAX:
            return IndexPlan(req, "Flat", {}, f"{n} vectors < {FLAT_MAX}: exact search")
        if n < HNSW_MAX and (4 * d + 8 * HNSW_M) * n <= budget:
            return _named("hnsw", req, n, d, f"{n} vectors < {HNSW_MAX}: HNSW graph")
        if n < ONDISK_MIN and 4 * d * n <= budget:
            return _named("ivf", req, n, d, "fp32 vectors fit the memory budget: IVF")
        big = n >= ONDISK_MIN
        why = f"{n} vectors >= {ONDISK_MIN}" if big else "fp32 vectors exceed the budget"
        return _ondisk(req, n, d, budget, f"{why}: IVF with lists on disk")
    if kind == ONDISK:
        plan = _ondisk(req, n, d, budget, "--index ondisk: lists on disk")
        return _flat_until_trainable(plan, n, d)
    if kind.startswith(ONDISK + ":"):
        factory = req.split(":", 1)[1].strip()
        why = "--index ondisk:FACTORY: lists on disk"
        plan = IndexPlan(req, factory, _default_params_for(factory, n), why, True)
        return _flat_until_trainable(plan, n, d)
    if kind in NAMED_KINDS:
        plan = _named(kind, req, n, d, f"--index {kind}")
    else:
        plan = IndexPlan(req, req, _default_params_for(req, n), "custom FAISS factory string")
    return _flat_until_trainable(plan, n, d)


# FAISS k-means warns below 39 training points per centroid (faiss/Clustering.cpp).
MIN_POINTS_PER_CENTROID = 39


def _flat_until_trainable(plan: IndexPlan, n: int, d: int) -> IndexPlan:
    """Exact search while a collection is too small to train the planned index well: every
    IVF list and every PQ/SQ codebook centroid needs 39 points, or FAISS prints warnings and
    the lists are noise. The requested kind stays in the manifest, so a later run that has
    enough vectors builds it."""
    need = min_training_points(plan.factory, d)
    if n >= need:
        return plan
    return IndexPlan(
        plan.requested,
        "Flat",
        {},
        f"{n} vectors are too few to train {plan.factory} (needs {need}): exact search",
    )


def min_training_points(factory: str, d: int) -> int:
    """Training vectors ``factory`` needs: 39 per IVF list and per PQ centroid; 0 when it
    needs no training (or is not a valid factory string: building it reports that)."""
    import faiss

    try:
        base = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        return 0
    if base.is_trained:
        return 0
    centroids = 1
    ivf = ivf_of(base)
    if ivf is not None:
        centroids = max(centroids, int(ivf.nlist))
    index = faiss.downcast_index(ivf if ivf is not None else base)
    pq = getattr(index, "pq", None)
    if pq is not None:
        centroids = max(centroids, int(pq.ksub))
    return MIN_POINTS_PER_CENTROID * centroids


def check_index_request(requested: str | None, dim: int, sparse: bool) -> None:
    """Refuse an ``--index`` that cannot be built, before any image is encoded: on sparse
    (ASIF) vectors anything but ``auto``, and a factory string FAISS cannot parse for
    ``dim`` (parsed without training, so this costs milliseconds)."""
    if requested is None:
        return
    req = requested.strip()
    kind = req.lower()
    if sparse:
        if kind not in ("auto", POSTINGS):
            raise QueryError(
                f"--index {req} does not apply here: ASIF collections are searched exactly "
                "over posting lists, not with a FAISS index (drop --index)"
            )
        return
    if kind in NAMED_KINDS:
        return
    hint = (
        "use auto, flat, hnsw, ivf, ivfpq, ondisk, ondisk:IVF-FACTORY or a FAISS factory "
        "string such as IVF256,Flat"
    )
    if kind.startswith(ONDISK + ":"):
        req = req.split(":", 1)[1].strip()
        if "IVF" not in req.upper():
            raise QueryError(f"--index {requested}: only IVF indexes can live on disk ({hint})")
    if kind.startswith("idmap"):
        raise QueryError(f"--index {req}: ids are mapped by vlmsearch itself; drop IDMap ({hint})")
    import faiss

    try:
        faiss.index_factory(dim, req, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = f"invalid --index {req!r} for {dim}-d vectors: {faiss_message(e)}; {hint}"
        raise QueryError(msg) from None


def check_search_params(params: dict[str, int] | None, factory: str, sparse: bool) -> None:
    """Refuse per-query parameters that the collection's index would not read (nprobe is
    for IVF, efSearch for HNSW), rather than ignore them silently."""
    if not params:
        return
    names = ", ".join(sorted(params))
    if sparse:
        raise QueryError(
            f"{names} does not apply to ASIF collections: they are searched exactly over "
            "posting lists, not with a FAISS index"
        )
    used = set()
    if "IVF" in factory:
        used.add("nprobe")
    elif "HNSW" in factory:
        used.add("efSearch")
    unused = sorted(set(params) - used)
    if unused:
        raise QueryError(
            f"{', '.join(unused)} does not apply to this collection's {factory or 'exact'} "
            "index (nprobe is for IVF indexes, efSearch for HNSW)"
        )


def ondisk_codes(n: int, d: int, budget: int) -> str:
    """The code part of an on-disk IVF factory: ``SQ8`` when n (d + 8) bytes of lists fit
    ``budget``, else the first of ``PQ{d/8}x8`` and ``PQ{d/16}x8`` whose lists
    (n (m + 8) bytes) fit, else the smallest."""
    if n * (d + 8) <= budget:
        return "SQ8"
    sizes = [_pq_m_near(d, d // div) for div in (8, 16)]
    for m in sizes:
        if n * (m + 8) <= budget:
            return f"PQ{m}x8"
    return f"PQ{sizes[-1]}x8"


def _pq_m_near(d: int, want: int) -> int:
    m = max(1, want)
    while d % m:
        m -= 1
    return m


def _ondisk(req: str, n: int, d: int, budget: int, reason: str) -> IndexPlan:
    nlist = _nlist(n)
    nprobe = max(16, min(nlist, nlist // 16 or 1))
    factory = f"IVF{nlist},{ondisk_codes(n, d, budget)}"
    return IndexPlan(req, factory, {"nprobe": nprobe}, reason, True)


def _named(kind: str, req: str, n: int, d: int, reason: str) -> IndexPlan:
    if kind == "flat":
        return IndexPlan(req, "Flat", {}, reason)
    if kind == "hnsw":
        return IndexPlan(req, f"HNSW{HNSW_M}", {"efSearch": HNSW_EF_SEARCH}, reason)
    nlist = _nlist(n)
    nprobe = max(1, min(nlist, nlist // 16 or 1))
    if kind == "ivf":
        return IndexPlan(req, f"IVF{nlist},Flat", {"nprobe": max(nprobe, 8)}, reason)
    return IndexPlan(req, f"IVF{nlist},PQ{_pq_m(d)}x8", {"nprobe": max(nprobe, 16)}, reason)


def _default_params_for(factory: str, n: int) -> dict[str, int]:
    if "HNSW" in factory and not factory.startswith("IVF"):
        return {"efSearch": HNSW_EF_SEARCH}
    if factory.startswith(("IVF", "OPQ", "PCA")):
        return {"nprobe": 16}
    return {}
