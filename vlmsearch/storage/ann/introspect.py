"""Looking inside a FAISS index: the base under an id map, its HNSW or IVF part, and
FAISS's error text without the C++ source location. Shared by planning, building,
tuning and the GPU copies, so it sits below all of them."""

from __future__ import annotations

import re
from typing import Any


def base_of(index: Any) -> Any:
    """The index under an ``IndexIDMap``/``IndexIDMap2`` wrapper, the base part of an
    on-disk index (``ondisk.OnDiskIndex``), or ``index`` itself."""
    import faiss

    layered = getattr(index, "base_index", None)
    if layered is not None:
        return layered

    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    return index


def hnsw_of(base: Any) -> Any:
    """``base`` as an ``IndexHNSW``, or None when it is not one."""
    import faiss

    base = faiss.downcast_index(base)
    return base if isinstance(base, faiss.IndexHNSW) else None


def ivf_of(base: Any) -> Any:
    """The IVF index inside ``base`` (also under a pre-transform), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(base)
    except RuntimeError:
        return None


def faiss_message(e: Exception) -> str:
    """FAISS's C++ message without its source location: 'Error in F at file:N: Error:
    'COND' failed: TEXT' -> TEXT (or 'COND failed')."""
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e).strip(), count=1)
    m = re.match(r"Error: '(.*?)' failed(?:: (.*))?", text, re.S)
    if m:
        text = m.group(2) or f"{m.group(1)} failed"
    return text.splitlines()[0][:200] if text else type(e).__name__
