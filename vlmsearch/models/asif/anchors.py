"""Anchor sets for ASIF, stored like a collection.

Layout::

    <anchors>/
      manifest.json        kind, count, both encoders' specs, per-side similarity, fingerprint
      pairs.parquet        one row per anchor pair: anchor, image, caption (+ class_index)
      image-vectors.npy    float32 (N, d_img): image side, one row per pair
      text-vectors.npy     float32 (N, d_txt): text side
      image.faiss, text.faiss   exact inner-product indexes over each side

A set is written into a temporary sibling directory and renamed into place, so a
crash never leaves a half-written set under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmsearch._version import __version__
from vlmsearch.errors import CollectionError
from vlmsearch.models.asif.relative import DEFAULT_P, SIMILARITIES, relative_representations
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.plan import plan_index
from vlmsearch.storage.layout import now_iso

ANCHORS_FORMAT = 1
MANIFEST_TYPE = "vlmsearch-anchors"
SIDES = ("image", "text")


def is_anchor_set(path: str | Path) -> bool:
    m = Path(path).expanduser() / "manifest.json"
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text(encoding="utf-8")).get("type") == MANIFEST_TYPE
    except (OSError, ValueError):
        return False


class AnchorSet:
    """N (image, caption) anchor pairs embedded by one image and one text encoder."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._index: dict[str, Any] = {}

    @classmethod
    def open(cls, path: str | Path) -> AnchorSet:
        path = Path(path).expanduser().absolute()
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise CollectionError(
                f"no anchor set at {path} (build one with `vlmsearch asif anchors build`)"
            )
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CollectionError(f"cannot read {mpath}: {e}") from None
        if manifest.get("type") != MANIFEST_TYPE:
            raise CollectionError(f"{path} is not an ASIF anchor set")
        if manifest.get("format_version") != ANCHORS_FORMAT:
            raise CollectionError(
                f"{path} has anchor format {manifest.get('format_version')}; this vlmsearch "
                f"reads format {ANCHORS_FORMAT}: rebuild it"
            )
        return cls(path, manifest)

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def anchor_kind(self) -> str:
        return str(self.manifest["anchor_kind"])

    @property
    def powers(self) -> dict[str, float]:
        """The power p recommended for each side (set at build time from measurements)."""
        rec = self.manifest.get("powers") or {}
        return {side: float(rec.get(side, DEFAULT_P)) for side in SIDES}

    def similarity(self, side: str) -> str:
        return str(self.manifest[side]["similarity"])

    def index(self, side: str) -> Any:
        if side not in self._index:
            self._index[side] = faiss_store.read_index(self.path / self.manifest[side]["index"])
        return self._index[side]

    def vectors(self, side: str) -> np.ndarray:
        return np.load(self.path / self.manifest[side]["vectors"])

    def pairs(self) -> pa.Table:
        return pq.read_table(self.path / "pairs.parquet")

    def relative(self, side: str, features: np.ndarray, k: int, p: float) -> np.ndarray:
        """Relative representations of ``features`` (from this set's encoder of ``side``).
        For the softmax (classifier) side, pass raw features: a constant 1 is appended to
        meet the bias column of the stored head."""
        feats = np.asarray(features, np.float32)
        if self.similarity(side) == "softmax":
            feats = np.hstack([feats, np.ones((len(feats), 1), np.float32)])
        return relative_representations(
            self.index(side), feats, self.count, k, p, self.similarity(side)
        )

    def info(self) -> dict[str, Any]:
        m = self.manifest
        size = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
        return {
            "anchors": str(self.path),
            "anchor_kind": m["anchor_kind"],
            "count": m["count"],
            "unique_images": m.get("unique_images"),
            "image_encoder": m["image_encoder"].get("name"),
            "text_encoder": m["text_encoder"].get("name"),
            "image_similarity": m["image"]["similarity"],
            "text_similarity": m["text"]["similarity"],
            "recommended_p": self.powers,
            "source": m.get("source"),
            "fingerprint": m["fingerprint"],
            "created_at": m.get("created_at"),
            "vlmsearch_version": m.get("vlmsearch_version"),
            "bytes_on_disk": size,
        }


def check_destination(out: str | Path, overwrite: bool = False) -> None:
    """Refuse to write over anything but an anchor set given ``overwrite`` (checked before
    any encoding starts, and again when writing)."""
    out = Path(out).expanduser().absolute()
    if not (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        return
    if is_anchor_set(out):
        if not overwrite:
            raise CollectionError(f"{out} is an anchor set; choose another path or --overwrite")
        return
    raise CollectionError(f"{out} exists and is not an anchor set; choose another path")


def write_anchor_set(
    out: str | Path,
    *,
    anchor_kind: str,
    image_encoder: dict[str, Any],
    text_encoder: dict[str, Any],
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    pairs: pa.Table,
    image_similarity: str = "cosine",
    text_similarity: str = "cosine",
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
    powers: dict[str, float] | None = None,
) -> AnchorSet:
    """Store an anchor set; both vector arrays have one row per pair."""
    out = Path(out).expanduser().absolute()
    n = len(pairs)
    if n == 0:
        raise CollectionError("an anchor set needs at least one pair")
    if image_vectors.shape[0] != n or text_vectors.shape[0] != n:
        raise ValueError("one image vector and one text vector per pair are required")
    for sim in (image_similarity, text_similarity):
        if sim not in SIMILARITIES:
            raise ValueError(f"unknown similarity {sim!r}")
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        h = hashlib.sha256()
        sides: dict[str, dict[str, Any]] = {}
        for side, vecs, sim in (
            ("image", image_vectors, image_similarity),
            ("text", text_vectors, text_similarity),
        ):
            sides[side] = _write_side(tmp, side, vecs, sim, h)
        pq.write_table(pairs, tmp / "pairs.parquet")
        manifest = {
            "type": MANIFEST_TYPE,
            "format_version": ANCHORS_FORMAT,
            "anchor_kind": anchor_kind,
            "count": n,
            "unique_images": len(set(pairs["image"].to_pylist()))
            if "image" in pairs.schema.names
            else None,
            "image_encoder": image_encoder,
            "text_encoder": text_encoder,
            **sides,
            "source": source or {},
            "powers": powers or {"image": DEFAULT_P, "text": DEFAULT_P},
            "fingerprint": h.hexdigest(),
            "created_at": now_iso(),
            "vlmsearch_version": __version__,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _replace_folder(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return AnchorSet.open(out)


def _write_side(tmp: Path, side: str, vecs: np.ndarray, sim: str, h: Any) -> dict[str, Any]:
    """Write one side's vectors and exact index into ``tmp``, add them to the fingerprint
    ``h``; returns the side's manifest entry."""
    vecs = np.ascontiguousarray(vecs, np.float32)
    n = len(vecs)
    np.save(tmp / f"{side}-vectors.npy", vecs)
    h.update(side.encode() + sim.encode() + vecs.tobytes())
    plan = plan_index("flat", n, vecs.shape[1])
    index = faiss_store.build_index(plan, vecs.shape[1], np.arange(n), vecs)
    faiss_store.write_index(index, tmp / f"{side}.faiss")
    return {
        "similarity": sim,
        "dim": int(vecs.shape[1]),
        "vectors": f"{side}-vectors.npy",
        "index": f"{side}.faiss",
    }


def _replace_folder(tmp: Path, out: Path) -> None:
    """Make the finished folder ``tmp`` the anchor set at ``out``: its files synced first,
    then renamed over any old set (moved aside, then removed)."""
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
