"""Anchor sets for ASIF, stored like a collection.

Layout (format 2)::

    <anchors>/
      manifest.json         kind, count, encoders' specs, blocks, fingerprint
      pairs.parquet         one row per anchor: anchor, block, image, caption (+ class_index)
      <block>-image-vectors.npy, <block>-text-vectors.npy   float32, one row per pair
      <block>-image.faiss, <block>-text.faiss               exact inner-product indexes
      <block>-image-groups.npz   (optional) hypernym groups over the block's classes

An anchor set is one or more **blocks** of anchors (data pairs, classifier prototypes).
Each block gives its own relative representation (top-k, power, L2 norm); the set's
representation is the blocks' side by side, each scaled by its weight, renormalised, so
an image-text score is the weighted mean of the per-block ASIF scores. A prototype block
may carry **groups**: extra anchors whose image similarity is the classifier's summed
probability over a group of classes (a WordNet hypernym; pooled as a sum or an L2 norm),
scaled by the group weight, ranked together with the classes. Format 1 (one block,
files without a prefix) is read as a single block.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmsearch._version import __version__
from vlmsearch.errors import CollectionError
from vlmsearch.models.asif.relative import (
    DEFAULT_P,
    SIMILARITIES,
    relative_from_dense,
    relative_representations,
)
from vlmsearch.storage.ann import faiss_store
from vlmsearch.storage.ann.plan import plan_index
from vlmsearch.storage.layout import now_iso

ANCHORS_FORMAT = 2
READABLE_FORMATS = (1, 2)
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


@dataclass
class BlockData:
    """One block as a builder hands it to :func:`write_anchor_set`.

    ``groups`` (softmax image side only): a list of class-index lists; each becomes an
    extra anchor after the classes, whose image similarity is ``group_weight`` times the
    ``group_pool``-norm of its classes' softmax probabilities (1: their sum).
    ``text_vectors`` then has one row per class and one per group; ``pairs`` one row per
    anchor."""

    name: str
    image_vectors: np.ndarray
    text_vectors: np.ndarray
    pairs: pa.Table
    image_similarity: str = "cosine"
    text_similarity: str = "cosine"
    powers: dict[str, float] | None = None
    weight: float = 1.0
    groups: list[list[int]] | None = None
    group_weight: float = 1.0
    group_pool: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


class Block:
    """A stored block: its anchors' vectors, indexes and powers."""

    def __init__(self, root: Path, entry: dict[str, Any]) -> None:
        self.root = root
        self.entry = entry
        self._index: dict[str, Any] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self._groups: np.ndarray | None = None

    name = property(lambda self: str(self.entry["name"]))
    count = property(lambda self: int(self.entry["count"]))
    weight = property(lambda self: float(self.entry.get("weight", 1.0)))

    @property
    def powers(self) -> dict[str, float]:
        rec = self.entry.get("powers") or {}
        return {side: float(rec.get(side, DEFAULT_P)) for side in SIDES}

    def similarity(self, side: str) -> str:
        return str(self.entry[side]["similarity"])

    def index(self, side: str) -> Any:
        if side not in self._index:
            self._index[side] = faiss_store.read_index(self.root / self.entry[side]["index"])
        return self._index[side]

    def vectors(self, side: str) -> np.ndarray:
        if side not in self._vectors:
            self._vectors[side] = np.load(self.root / self.entry[side]["vectors"])
        return self._vectors[side]

    def group_matrix(self) -> np.ndarray | None:
        """(n_classes, n_groups) 0/1 membership, or None without groups."""
        g = self.entry["image"].get("groups")
        if not g:
            return None
        if self._groups is None:
            with np.load(self.root / g["file"]) as z:
                indptr, indices = z["indptr"], z["indices"]
            n_classes = len(self.vectors("image"))
            m = np.zeros((n_classes, len(indptr) - 1), np.float32)
            for j in range(len(indptr) - 1):
                m[indices[indptr[j] : indptr[j + 1]], j] = 1.0
            self._groups = m
        return self._groups

    def relative(self, side: str, feats: np.ndarray, k: int, p: float | None) -> np.ndarray:
        p = self.powers[side] if p is None else p
        sim = self.similarity(side)
        if sim == "cosine":
            norm = np.linalg.norm(feats, axis=1, keepdims=True)
            unit = np.divide(feats, norm, out=np.zeros_like(feats), where=norm > 0)
            return relative_representations(self.index(side), unit, self.count, k, p, "cosine")
        # softmax: a classifier's probabilities over its classes (logits = [f, 1] . [W, b]);
        # the full softmax is computed (a head has at most some thousands of rows) because
        # group anchors need true probabilities, not ratios to the top logit
        w = self.vectors(side)
        logits = feats @ w[:, :-1].T + w[:, -1]
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        groups = self.group_matrix()
        if groups is not None:
            g = self.entry["image"]["groups"]
            q = float(g.get("pool", 1.0))  # 1: summed probability; 2: their L2 norm
            pooled = (probs**q @ groups) ** (1.0 / q)
            probs = np.hstack([probs, float(g.get("weight", 1.0)) * pooled])
        return relative_from_dense(probs, k, p)


class AnchorSet:
    """Anchor pairs embedded by one image and one text encoder, in one or more blocks."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.blocks = [Block(path, b) for b in manifest["blocks"]]

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
        if manifest.get("format_version") not in READABLE_FORMATS:
            raise CollectionError(
                f"{path} has anchor format {manifest.get('format_version')}; this vlmsearch "
                f"reads formats {', '.join(map(str, READABLE_FORMATS))}: rebuild it"
            )
        if manifest["format_version"] == 1:  # one block, named after its kind
            manifest = {
                **manifest,
                "blocks": [
                    {
                        "name": manifest["anchor_kind"],
                        "count": manifest["count"],
                        "weight": 1.0,
                        "powers": manifest.get("powers"),
                        "image": manifest["image"],
                        "text": manifest["text"],
                    }
                ],
            }
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
    def recipe(self) -> int | None:
        """The default-anchors recipe this set was built by (None for other sets)."""
        r = (self.manifest.get("source") or {}).get("recipe")
        return int(r) if r is not None else None

    @property
    def powers(self) -> dict[str, float]:
        """The powers recommended for each side. With several blocks whose powers differ,
        a side's value is None's stand-in: each block then uses its own."""
        return self.blocks[0].powers

    @property
    def calibration(self) -> dict[str, Any] | None:
        """A score calibration measured for this set (with the k and powers it holds for)."""
        return self.manifest.get("calibration")

    @property
    def uniform_powers(self) -> bool:
        return all(b.powers == self.blocks[0].powers for b in self.blocks)

    @property
    def raw_image_features(self) -> bool:
        """True when the image side wants the encoder's raw (unnormalised) features: a
        classifier block applies its head to them. Cosine blocks normalise for themselves."""
        return any(b.similarity("image") == "softmax" for b in self.blocks)

    def similarity(self, side: str) -> str:
        """The first block's similarity of ``side`` (format-1 callers)."""
        return self.blocks[0].similarity(side)

    def index(self, side: str) -> Any:
        return self.blocks[0].index(side)

    def vectors(self, side: str) -> np.ndarray:
        return self.blocks[0].vectors(side)

    def pairs(self) -> pa.Table:
        return pq.read_table(self.path / "pairs.parquet")

    def relative(
        self, side: str, features: np.ndarray, k: int, p: float | None = None
    ) -> np.ndarray:
        """Relative representations of ``features`` (from this set's encoder of ``side``):
        each block's, weighted, side by side, renormalised. ``p`` overrides every block's
        power; None keeps each block's own. Softmax blocks want raw features."""
        feats = np.asarray(features, np.float32)
        if len(feats) == 0:
            return np.zeros((0, self.count), np.float32)
        parts = [b.relative(side, feats, k, p) for b in self.blocks]
        if len(parts) == 1:
            return parts[0]
        out = np.hstack([b.weight * r for b, r in zip(self.blocks, parts, strict=True)])
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0).astype(np.float32)

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
            "image_similarity": "+".join(dict.fromkeys(b.similarity("image") for b in self.blocks)),
            "text_similarity": "+".join(dict.fromkeys(b.similarity("text") for b in self.blocks)),
            "recommended_p": self.powers if self.uniform_powers else None,
            "blocks": [
                {
                    "name": b.name,
                    "count": b.count,
                    "weight": b.weight,
                    "image_similarity": b.similarity("image"),
                    "groups": len(b.group_matrix().T) if b.group_matrix() is not None else 0,
                    "recommended_p": b.powers,
                }
                for b in self.blocks
            ],
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
    image_vectors: np.ndarray | None = None,
    text_vectors: np.ndarray | None = None,
    pairs: pa.Table | None = None,
    image_similarity: str = "cosine",
    text_similarity: str = "cosine",
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
    powers: dict[str, float] | None = None,
    blocks: list[BlockData] | None = None,
    calibration: dict[str, Any] | None = None,
) -> AnchorSet:
    """Store an anchor set: ``blocks``, or one block from the vectors and ``pairs``."""
    out = Path(out).expanduser().absolute()
    if blocks is None:
        if image_vectors is None or text_vectors is None or pairs is None:
            raise ValueError("pass blocks, or image_vectors, text_vectors and pairs")
        blocks = [
            BlockData(
                anchor_kind, image_vectors, text_vectors, pairs, image_similarity,
                text_similarity, powers or {"image": DEFAULT_P, "text": DEFAULT_P},
            )
        ]  # fmt: skip
    for b in blocks:
        _check_block(b)
    if len({b.name for b in blocks}) != len(blocks):
        raise ValueError("block names must differ")
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        h = hashlib.sha256()
        entries, tables, offset = [], [], 0
        for b in blocks:
            entries.append(_write_block(tmp, b, h, len(blocks) == 1))
            t = b.pairs.append_column("block", pa.array([b.name] * len(b.pairs)))
            numbers = pa.array(np.arange(offset, offset + len(t)), pa.int64())
            if "anchor" in t.column_names:  # numbered across blocks
                t = t.set_column(t.column_names.index("anchor"), "anchor", numbers)
            else:
                t = t.add_column(0, "anchor", numbers)
            tables.append(t)
            offset += len(t)
        pairs_all = pa.concat_tables(tables, promote_options="default")
        pq.write_table(pairs_all, tmp / "pairs.parquet")
        images = [
            x
            for x in (pairs_all["image"].to_pylist() if "image" in pairs_all.schema.names else [])
            if x and not x.startswith(("class:", "classes:"))
        ]
        manifest = {
            "type": MANIFEST_TYPE,
            "format_version": ANCHORS_FORMAT,
            "anchor_kind": anchor_kind,
            "count": offset,
            "unique_images": len(set(images)) if images else None,
            "image_encoder": image_encoder,
            "text_encoder": text_encoder,
            "blocks": entries,
            "source": source or {},
            "calibration": calibration,
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


def _check_block(b: BlockData) -> None:
    n = len(b.pairs)
    if n == 0:
        raise CollectionError("an anchor set needs at least one pair")
    n_groups = len(b.groups or [])
    if b.groups and b.image_similarity != "softmax":
        raise ValueError("groups need a softmax (classifier) image side")
    if b.image_vectors.shape[0] + n_groups != n or b.text_vectors.shape[0] != n:
        raise ValueError("one image vector (or group) and one text vector per pair are required")
    for sim in (b.image_similarity, b.text_similarity):
        if sim not in SIMILARITIES:
            raise ValueError(f"unknown similarity {sim!r}")
    if b.text_similarity != "cosine":
        raise ValueError("the text side of an anchor block compares by cosine")


def _write_block(tmp: Path, b: BlockData, h: Any, single: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": b.name,
        "count": len(b.pairs),
        "weight": float(b.weight),
        "powers": b.powers or {"image": DEFAULT_P, "text": DEFAULT_P},
        **b.meta,
    }
    # a lone plain block hashes as format 1 did, so a default set rebuilt by the old recipe
    # keeps the fingerprint its collections recorded
    legacy = single and not b.groups
    if not legacy:
        h.update(json.dumps([b.name, entry["weight"], b.group_weight]).encode())
    for side, vecs, sim in (
        ("image", b.image_vectors, b.image_similarity),
        ("text", b.text_vectors, b.text_similarity),
    ):
        entry[side] = _write_side(tmp, f"{b.name}-{side}", side if legacy else None, vecs, sim, h)
    if b.groups:
        lens = [len(g) for g in b.groups]
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        indices = np.concatenate([np.asarray(g, np.int64) for g in b.groups])
        fname = f"{b.name}-image-groups.npz"
        np.savez(tmp / fname, indptr=indptr, indices=indices)
        h.update(indptr.tobytes() + indices.tobytes() + str(b.group_pool).encode())
        entry["image"]["groups"] = {
            "file": fname,
            "count": len(lens),
            "weight": b.group_weight,
            "pool": b.group_pool,
        }
    return entry


def _write_side(
    tmp: Path, stem: str, hash_name: str | None, vecs: np.ndarray, sim: str, h: Any
) -> dict[str, Any]:
    """Write one side's vectors and exact index into ``tmp``, add them to the fingerprint
    ``h`` (under ``hash_name``, default ``stem``); returns the side's manifest entry."""
    vecs = np.ascontiguousarray(vecs, np.float32)
    n = len(vecs)
    np.save(tmp / f"{stem}-vectors.npy", vecs)
    h.update((hash_name or stem).encode() + sim.encode() + vecs.tobytes())
    plan = plan_index("flat", n, vecs.shape[1])
    index = faiss_store.build_index(plan, vecs.shape[1], np.arange(n), vecs)
    faiss_store.write_index(index, tmp / f"{stem}.faiss")
    return {
        "similarity": sim,
        "dim": int(vecs.shape[1]),
        "vectors": f"{stem}-vectors.npy",
        "index": f"{stem}.faiss",
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
