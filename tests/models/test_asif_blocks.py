"""ASIF anchor sets in blocks (format 2): softmax blocks with WordNet hypernym groups, several
blocks side by side, format-1 sets read as one block, the default recipes, and data anchors
with a prototype block.

The block arithmetic is checked against hand computations in numpy on synthetic anchors;
the default recipes use the real packaged EfficientNet-Lite0 and MiniLM (skipped without
the offline extra); data anchors use the tiny random open_clip tower and a tiny random timm
classifier saved to a local file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli_helpers import one_line_error, run
from tests.conftest import TINY
from tests.models.test_asif_collection import photos, rgb, write_pairs_csv
from vlmsearch.errors import ModelError
from vlmsearch.models.asif import hierarchy as hier
from vlmsearch.models.asif.anchors import AnchorSet, BlockData, write_anchor_set
from vlmsearch.models.asif.relative import relative_from_topk

ENC = {"kind": "synthetic", "name": "synthetic", "dim": 0}
TOWER = f"open_clip:{TINY}"
TIMM_MODEL = "mobilenetv3_small_050"  # as tests/models/test_unimodal.py: tiny, CPU-cheap


# -- helpers --------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pairs(n: int, prefix: str = "a") -> pa.Table:
    return pa.table(
        {
            "anchor": pa.array(np.arange(n), pa.int64()),
            "image": [f"{prefix}{i}" for i in range(n)],
            "caption": [f"caption {prefix}{i}" for i in range(n)],
        }
    )


def _topk_power_norm(s: np.ndarray, k: int, p: float) -> np.ndarray:
    """Keep each row's k largest (clamped at 0), raise to p, L2-normalise (float64)."""
    s = np.clip(np.asarray(s, np.float64), 0.0, None)
    out = np.zeros_like(s)
    for r in range(len(s)):
        top = np.argsort(-s[r])[:k]
        out[r, top] = s[r, top] ** p
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _hand_softmax_block(
    feats: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    groups: list[list[int]],
    weight: float,
    pool: float,
    k: int,
    p: float,
) -> np.ndarray:
    """Softmax over the classes, then one value per group: weight * (sum probs**pool)**(1/pool);
    classes and groups side by side, top-k, power, L2 norm."""
    probs = _softmax(feats.astype(np.float64) @ w.T.astype(np.float64) + b)
    grp = [weight * (probs[:, g] ** pool).sum(axis=1) ** (1.0 / pool) for g in groups]
    sims = np.hstack([probs, np.stack(grp, axis=1)]) if groups else probs
    return _topk_power_norm(sims, k, p)


def _hand_cosine(feats: np.ndarray, anchors: np.ndarray, k: int, p: float) -> np.ndarray:
    return _topk_power_norm(_unit(feats).astype(np.float64) @ anchors.T, k, p)


@dataclass
class Head:
    """A synthetic classifier head over D-dim features and a text side per class and group."""

    w: np.ndarray
    b: np.ndarray
    text: np.ndarray
    groups: list[list[int]]

    @property
    def image_vectors(self) -> np.ndarray:
        # as build.prototype_block stores a head: logits = [f, 1] . [W, b]
        return np.hstack([self.w, self.b[:, None]]).astype(np.float32)


N_CLASSES, D_IMG, D_TXT = 12, 8, 6
GROUPS = [[0, 1, 2], [3, 4, 5, 6], [0, 7, 8, 9, 10, 11]]  # the first and last overlap


def _head(seed: int = 0, groups: list[list[int]] | None = GROUPS) -> Head:
    rng = np.random.default_rng(seed)
    n_text = N_CLASSES + len(groups or [])
    return Head(
        w=rng.normal(size=(N_CLASSES, D_IMG)).astype(np.float32),
        b=rng.normal(scale=0.5, size=N_CLASSES).astype(np.float32),
        text=_unit(rng.normal(size=(n_text, D_TXT))),
        groups=list(groups or []),
    )


def _softmax_block(
    h: Head, name: str = "prototypes", *, weight: float = 1.0, group_weight: float = 1.0,
    pool: float = 1.0, powers: dict[str, float] | None = None,
) -> BlockData:  # fmt: skip
    return BlockData(
        name,
        h.image_vectors,
        h.text,
        _pairs(len(h.text), prefix=name),
        image_similarity="softmax",
        powers=powers or {"image": 2.0, "text": 16.0},
        weight=weight,
        groups=h.groups or None,
        group_weight=group_weight,
        group_pool=pool,
    )


def _write(path: Path, blocks: list[BlockData], kind: str = "prototype") -> AnchorSet:
    return write_anchor_set(
        path,
        anchor_kind=kind,
        image_encoder={**ENC, "dim": D_IMG},
        text_encoder={**ENC, "dim": D_TXT},
        blocks=blocks,
    )


def _legacy_fingerprint(iv, tv, image_sim: str = "cosine", text_sim: str = "cosine") -> str:
    """Format 1's fingerprint, as ``git show 6734f0a:vlmsearch/models/asif/anchors.py``."""
    h = hashlib.sha256()
    h.update(b"image" + image_sim.encode() + np.ascontiguousarray(iv, np.float32).tobytes())
    h.update(b"text" + text_sim.encode() + np.ascontiguousarray(tv, np.float32).tobytes())
    return h.hexdigest()


def to_format1(src: Path, dst: Path) -> None:
    """Rewrite a single-block format-2 set at ``src`` into the format-1 layout at ``dst``:
    unprefixed files, no block column, top-level image/text/powers (as 6734f0a wrote it)."""
    m = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    (block,) = m["blocks"]
    dst.mkdir(parents=True)
    sides = {}
    for side in ("image", "text"):
        e = block[side]
        assert "groups" not in e
        shutil.copyfile(src / e["vectors"], dst / f"{side}-vectors.npy")
        shutil.copyfile(src / e["index"], dst / f"{side}.faiss")
        sides[side] = {
            "similarity": e["similarity"],
            "dim": e["dim"],
            "vectors": f"{side}-vectors.npy",
            "index": f"{side}.faiss",
        }
    pairs = pq.read_table(src / "pairs.parquet").drop_columns(["block"])
    pq.write_table(pairs, dst / "pairs.parquet")
    manifest = {
        "type": m["type"],
        "format_version": 1,
        "anchor_kind": m["anchor_kind"],
        "count": m["count"],
        "unique_images": m["unique_images"],
        "image_encoder": m["image_encoder"],
        "text_encoder": m["text_encoder"],
        **sides,
        # format 1 recorded no recipe (nor hypernyms): the classifier, classes, templates
        "source": {k: v for k, v in m["source"].items() if k not in ("recipe", "hypernyms")},
        "powers": block["powers"],
        "fingerprint": m["fingerprint"],
        "created_at": m["created_at"],
        "vlmsearch_version": "0.0.0-format1",
    }
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


# -- 1. the packaged WordNet table ----------------------------------------------------------------
def test_wordnet_table_and_hypernyms() -> None:
    table = hier.wordnet_table()
    classes = table["classes"]
    assert len(classes) == hier.IMAGENET_CLASSES == 1000
    assert len(set(classes)) == 1000 and classes == sorted(classes)
    assert all(c in table["synsets"] for c in classes)

    hyps = hier.hypernyms()
    by_id = {h.wnid: h for h in hyps}
    assert [h.wnid for h in hyps] == sorted(by_id)  # in WordNet id order
    goldfinch = classes.index("n01531178")
    assert goldfinch == 11
    bird = by_id["n01503061"]
    assert bird.lemmas[0] == "bird" and "feathers" in bird.gloss
    assert goldfinch in bird.classes
    dog = by_id["n02084071"]
    assert classes.index("n02085620") in dog.classes  # Chihuahua
    assert not set(bird.classes) & set(dog.classes)
    assert list(bird.classes) == sorted(bird.classes)
    assert all(hier.MIN_CLASSES <= len(h.classes) <= hier.MAX_CLASSES for h in hyps)
    # the bounds do select: wider limits give more synsets (the classes themselves, "organism")
    assert len(hier.hypernyms(1, 1000)) > len(hyps)
    assert all(len(h.classes) > 1 for h in hyps)

    texts = hier.hypernym_texts(bird, "a photo of a {}.")
    assert len(texts) == 2
    assert texts[0] == "a photo of a bird."
    assert texts[1].startswith("a photo of a bird, ") and bird.gloss in texts[1]
    assert texts[1].endswith(".")


# -- 2. a softmax block with groups ---------------------------------------------------------------
@pytest.mark.parametrize(("pool", "group_weight"), [(1.0, 1.0), (2.0, 1.0), (2.0, 0.5), (1.0, 0.3)])
def test_softmax_block_with_groups_equals_hand_computation(
    tmp_path: Path, pool: float, group_weight: float
) -> None:
    h = _head(1)
    aset = _write(tmp_path / "a", [_softmax_block(h, group_weight=group_weight, pool=pool)])
    n = N_CLASSES + len(GROUPS)
    assert aset.count == n and len(aset.blocks) == 1
    g = aset.blocks[0].group_matrix()
    assert g is not None and g.shape == (N_CLASSES, len(GROUPS))
    for j, grp in enumerate(GROUPS):
        assert sorted(np.flatnonzero(g[:, j]).tolist()) == grp
    assert aset.raw_image_features

    feats = np.random.default_rng(2).normal(size=(7, D_IMG)).astype(np.float32)
    for p in (1.0, 3.0):
        got = aset.relative("image", feats, k=n, p=p)
        want = _hand_softmax_block(feats, h.w, h.b, GROUPS, group_weight, pool, n, p)
        assert got.shape == (7, n)
        np.testing.assert_allclose(got, want, atol=1e-5)

    # top-k: exactly k non-zeros per row, the k largest of the full representation
    k = 4
    got = aset.relative("image", feats, k=k, p=1)
    assert ((got > 0).sum(axis=1) == k).all()
    np.testing.assert_allclose(
        got, _hand_softmax_block(feats, h.w, h.b, GROUPS, group_weight, pool, k, 1.0), atol=1e-5
    )
    full = _hand_softmax_block(feats, h.w, h.b, GROUPS, group_weight, pool, n, 1.0)
    for r in range(len(feats)):
        assert set(np.flatnonzero(got[r])) == set(np.argsort(-full[r])[:k])

    # the text side: cosine to one text vector per class and per group
    tq = np.random.default_rng(3).normal(size=(5, D_TXT)).astype(np.float32)
    np.testing.assert_allclose(
        aset.relative("text", tq, k=6, p=2), _hand_cosine(tq, h.text, 6, 2), atol=1e-5
    )


def test_group_pool_and_weight_change_the_representation(tmp_path: Path) -> None:
    h = _head(4)
    feats = np.random.default_rng(5).normal(size=(6, D_IMG)).astype(np.float32)
    n = N_CLASSES + len(GROUPS)
    reps = [
        _write(tmp_path / f"s{i}", [_softmax_block(h, group_weight=gw, pool=pool)]).relative(
            "image", feats, k=n, p=1
        )
        for i, (gw, pool) in enumerate([(1.0, 1.0), (1.0, 2.0), (0.5, 2.0)])
    ]
    # pooling by the L2 norm gives smaller group values than the sum (spread probabilities)
    sum_groups = reps[0][:, N_CLASSES:] / reps[0][:, :1]
    l2_groups = reps[1][:, N_CLASSES:] / reps[1][:, :1]
    assert (l2_groups < sum_groups).all()
    # the group weight scales the group anchors against the classes
    np.testing.assert_allclose(
        reps[2][:, N_CLASSES:] / reps[2][:, :1], 0.5 * l2_groups, rtol=1e-4, atol=1e-6
    )
    # a different group weight or pool is another anchor set
    fps = {
        _write(tmp_path / f"f{i}", [_softmax_block(h, group_weight=gw, pool=pool)]).fingerprint
        for i, (gw, pool) in enumerate([(1.0, 1.0), (1.0, 2.0), (0.5, 2.0)])
    }
    assert len(fps) == 3


def test_softmax_block_without_groups(tmp_path: Path) -> None:
    h = _head(6, groups=None)
    aset = _write(tmp_path / "a", [_softmax_block(h)])
    assert aset.count == N_CLASSES and aset.blocks[0].group_matrix() is None
    feats = np.random.default_rng(7).normal(size=(4, D_IMG)).astype(np.float32)
    np.testing.assert_allclose(
        aset.relative("image", feats, k=5, p=2),
        _hand_softmax_block(feats, h.w, h.b, [], 1.0, 1.0, 5, 2.0),
        atol=1e-5,
    )


# -- 3. two blocks with different weights ---------------------------------------------------------
def test_two_blocks_weighted_side_by_side(tmp_path: Path) -> None:
    from vlmsearch.models.asif.encoder import resolve_powers

    rng = np.random.default_rng(8)
    n_data = 20
    # non-negative vectors: no block's representation is all zeros, so scores are exact means
    data_img, data_txt = _unit(rng.random((n_data, D_IMG))), _unit(rng.random((n_data, D_TXT)))
    data_powers = {"image": 4.0, "text": 4.0}
    proto_powers = {"image": 2.0, "text": 16.0}
    data = BlockData(
        "data", data_img, data_txt, _pairs(n_data, "d"), powers=data_powers, weight=1.0
    )
    h = _head(9)
    proto = _softmax_block(h, weight=0.5, group_weight=0.5, pool=2.0, powers=proto_powers)
    both = _write(tmp_path / "both", [data, proto], kind="data+prototype")
    n_proto = N_CLASSES + len(GROUPS)
    assert both.count == n_data + n_proto
    assert [b.name for b in both.blocks] == ["data", "prototypes"]
    assert [b.weight for b in both.blocks] == [1.0, 0.5]
    assert [b.powers for b in both.blocks] == [data_powers, proto_powers]
    assert not both.uniform_powers and both.raw_image_features
    assert both.info()["recommended_p"] is None
    pairs = both.pairs()
    assert pairs["anchor"].to_pylist() == list(range(n_data + n_proto))
    assert pairs["block"].to_pylist() == ["data"] * n_data + ["prototypes"] * n_proto

    # each block alone, as its own set: the same block arithmetic through another path
    alone_data = _write(tmp_path / "d", [data], kind="data")
    alone_proto = _write(tmp_path / "p", [proto])

    feats = np.abs(rng.normal(size=(6, D_IMG))).astype(np.float32)
    texts = rng.random((5, D_TXT)).astype(np.float32)
    k = 7

    def combined(side: str, x: np.ndarray, p: float | None) -> np.ndarray:
        parts = [
            1.0 * alone_data.relative(side, x, k, p),
            0.5 * alone_proto.relative(side, x, k, p),
        ]
        out = np.hstack(parts).astype(np.float64)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    for side, x in (("image", feats), ("text", texts)):
        for p in (1.0, 3.0, None):
            got = both.relative(side, x, k, p)
            assert got.shape == (len(x), n_data + n_proto)
            np.testing.assert_allclose(got, combined(side, x, p), atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    # and against the hand computation, with each block's own powers (p=None)
    want_img = np.hstack(
        [
            _hand_cosine(feats, data_img, k, data_powers["image"]),
            0.5 * _hand_softmax_block(feats, h.w, h.b, GROUPS, 0.5, 2.0, k, 2.0),
        ]
    )
    want_img /= np.linalg.norm(want_img, axis=1, keepdims=True)
    np.testing.assert_allclose(both.relative("image", feats, k, None), want_img, atol=1e-5)
    # an explicit p overrides every block's power
    want_p3 = np.hstack(
        [
            _hand_cosine(feats, data_img, k, 3.0),
            0.5 * _hand_softmax_block(feats, h.w, h.b, GROUPS, 0.5, 2.0, k, 3.0),
        ]
    )
    want_p3 /= np.linalg.norm(want_p3, axis=1, keepdims=True)
    np.testing.assert_allclose(both.relative("image", feats, k, 3.0), want_p3, atol=1e-5)
    # p=None is not "the first block's power everywhere"
    assert not np.allclose(
        both.relative("text", texts, k, None), both.relative("text", texts, k, 4.0), atol=1e-3
    )

    # an image-text score is the weight-squared mean of the per-block ASIF scores
    score = both.relative("image", feats, k, None) @ both.relative("text", texts, k, None).T
    s_data = alone_data.relative("image", feats, k) @ alone_data.relative("text", texts, k).T
    s_proto = alone_proto.relative("image", feats, k) @ alone_proto.relative("text", texts, k).T
    np.testing.assert_allclose(score, (s_data + 0.25 * s_proto) / 1.25, atol=1e-5)

    # an encoder over this set keeps p=None (each block its own) unless told otherwise
    assert resolve_powers(both, None, None) == (None, None)
    assert resolve_powers(both, 3, None) == (3.0, None)
    assert resolve_powers(alone_proto, None, None) == (2.0, 16.0)
    # blocks that agree on powers give the set's powers
    same = _write(
        tmp_path / "same",
        [
            BlockData("data", data_img, data_txt, _pairs(n_data, "d"), powers=proto_powers),
            _softmax_block(h, powers=proto_powers),
        ],
    )
    assert same.uniform_powers and resolve_powers(same, None, None) == (2.0, 16.0)

    # the weights are part of what the set is
    reweighted = _write(
        tmp_path / "w", [data, _softmax_block(h, weight=1.0, group_weight=0.5, pool=2.0,
                                              powers=proto_powers)]
    )  # fmt: skip
    assert reweighted.fingerprint != both.fingerprint
    assert not np.allclose(
        reweighted.relative("image", feats, k), both.relative("image", feats, k), atol=1e-3
    )


def test_block_refusals(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    iv, tv = _unit(rng.random((4, D_IMG))), _unit(rng.random((4, D_TXT)))
    with pytest.raises(ValueError, match="softmax"):  # groups on a cosine side
        _write(tmp_path / "a", [BlockData("x", iv, tv, _pairs(4), groups=[[0, 1]])])
    with pytest.raises(ValueError, match="names must differ"):
        _write(
            tmp_path / "b", [BlockData("x", iv, tv, _pairs(4)), BlockData("x", iv, tv, _pairs(4))]
        )
    h = _head(11)
    short = BlockData("p", h.image_vectors, h.text[:N_CLASSES], _pairs(N_CLASSES),
                      image_similarity="softmax", groups=GROUPS)  # fmt: skip
    with pytest.raises(ValueError, match="one image vector"):
        _write(tmp_path / "c", [short])
    assert not [p for p in tmp_path.iterdir()]  # nothing written, no temporary left


# -- 4. format 1 -----------------------------------------------------------------------------------
def test_format1_set_reads_as_one_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    n = 30
    iv, tv = _unit(rng.normal(size=(n, D_IMG))), _unit(rng.normal(size=(n, D_TXT)))
    powers = {"image": 3.0, "text": 5.0}
    new = write_anchor_set(
        tmp_path / "v2", anchor_kind="data", image_encoder={**ENC, "dim": D_IMG},
        text_encoder={**ENC, "dim": D_TXT}, image_vectors=iv, text_vectors=tv,
        pairs=_pairs(n), powers=powers,
    )  # fmt: skip
    assert new.manifest["format_version"] == 2
    # a lone plain block hashes as format 1 did
    assert new.fingerprint == _legacy_fingerprint(iv, tv)

    to_format1(tmp_path / "v2", tmp_path / "v1")
    assert not list((tmp_path / "v1").glob("data-*"))  # only format 1's file names
    old = AnchorSet.open(tmp_path / "v1")
    assert old.manifest["format_version"] == 1
    assert old.count == n and old.anchor_kind == "data" and old.fingerprint == new.fingerprint
    assert len(old.blocks) == 1
    (blk,) = old.blocks
    assert blk.name == "data" and blk.count == n and blk.weight == 1.0
    assert blk.powers == powers == old.powers and old.uniform_powers
    assert old.similarity("image") == old.similarity("text") == "cosine"
    assert not old.raw_image_features and blk.group_matrix() is None
    np.testing.assert_array_equal(old.vectors("image"), iv)
    np.testing.assert_array_equal(old.vectors("text"), tv)
    assert old.pairs().num_rows == n
    info = old.info()
    assert info["recommended_p"] == powers and info["count"] == n
    assert [b["name"] for b in info["blocks"]] == ["data"]

    qi = rng.normal(size=(8, D_IMG)).astype(np.float32)
    qt = rng.normal(size=(8, D_TXT)).astype(np.float32)
    for k in (5, n):
        for p in (None, 1.0, 4.0):
            np.testing.assert_allclose(
                old.relative("image", qi, k, p), new.relative("image", qi, k, p), atol=1e-6
            )
            np.testing.assert_allclose(
                old.relative("text", qt, k, p), new.relative("text", qt, k, p), atol=1e-6
            )
    # and the values themselves (p=None: the powers recorded at the top of the manifest)
    np.testing.assert_allclose(
        old.relative("image", qi, 5), _hand_cosine(qi, iv, 5, 3.0), atol=1e-5
    )
    np.testing.assert_allclose(old.relative("text", qt, 5), _hand_cosine(qt, tv, 5, 5.0), atol=1e-5)


def test_format1_prototype_set_matches_the_old_topk_softmax(tmp_path: Path) -> None:
    h = _head(13, groups=None)
    new = _write(tmp_path / "v2", [_softmax_block(h, name="prototype")])
    assert new.fingerprint == _legacy_fingerprint(h.image_vectors, h.text, "softmax", "cosine")
    to_format1(tmp_path / "v2", tmp_path / "v1")
    old = AnchorSet.open(tmp_path / "v1")
    assert old.fingerprint == new.fingerprint
    assert old.powers == {"image": 2.0, "text": 16.0} and old.raw_image_features

    feats = np.random.default_rng(14).normal(size=(6, D_IMG)).astype(np.float32)
    k = 5
    # how format 1 scored it: FAISS top-k of [f, 1] . [W, b], softmax up to its denominator
    logits = np.hstack([feats, np.ones((len(feats), 1), np.float32)]) @ h.image_vectors.T
    ids = np.argsort(-logits, axis=1)[:, :k]
    want = relative_from_topk(np.take_along_axis(logits, ids, 1), ids, N_CLASSES, 2.0, "softmax")
    np.testing.assert_allclose(old.relative("image", feats, k), want, atol=1e-5)
    np.testing.assert_allclose(new.relative("image", feats, k), want, atol=1e-5)


def test_fingerprints_of_blocks_are_not_legacy(tmp_path: Path) -> None:
    """Only a lone block without groups uses format 1's hash."""
    h = _head(15)
    grouped = _write(tmp_path / "g", [_softmax_block(h)])
    assert grouped.fingerprint != _legacy_fingerprint(h.image_vectors, h.text, "softmax")
    rng = np.random.default_rng(16)
    iv, tv = _unit(rng.random((5, D_IMG))), _unit(rng.random((5, D_TXT)))
    one = _write(tmp_path / "one", [BlockData("data", iv, tv, _pairs(5))], kind="data")
    assert one.fingerprint == _legacy_fingerprint(iv, tv)
    renamed = _write(tmp_path / "r", [BlockData("other", iv, tv, _pairs(5))], kind="data")
    assert renamed.fingerprint == one.fingerprint  # format 1 hashed no name
    two = _write(
        tmp_path / "two",
        [BlockData("data", iv, tv, _pairs(5)), BlockData("more", iv, tv, _pairs(5))],
        kind="data",
    )
    assert two.fingerprint not in (one.fingerprint, _legacy_fingerprint(iv, tv))


# -- 5. the default recipes (real packaged encoders) ----------------------------------------------
@dataclass
class Offline:
    img: object
    txt: object
    r1: AnchorSet


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Offline:
    """EfficientNet-Lite0 and MiniLM loaded once, and the recipe-1 set built once (the
    sha256 cache and the set live under a temporary cache)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    from vlmsearch.models.asif.encoder import ensure_default_anchors
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

    root = tmp_path_factory.mktemp("offline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        img = load_image_encoder("efficientnet-lite0", device="cpu")
        txt = load_text_encoder("minilm", device="cpu")
        r1 = ensure_default_anchors(img, txt, root / "r1", recipe=1)  # type: ignore[arg-type]
    return Offline(img, txt, r1)


def test_default_recipes(offline: Offline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmsearch.models.asif.build import PROTOTYPE_POWERS, PROTOTYPE_TEMPLATE
    from vlmsearch.models.asif.encoder import (
        DEFAULT_RECIPE,
        default_anchors_path,
        ensure_default_anchors,
    )
    from vlmsearch.runtime import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache_dir().is_relative_to(tmp_path)
    assert DEFAULT_RECIPE == 2
    img, txt, r1 = offline.img, offline.txt, offline.r1
    p1 = default_anchors_path(img.name, txt.name, 1)
    p2 = default_anchors_path(img.name, txt.name, 2)
    assert p1.parent == p2.parent == cache_dir() / "anchors" and p1 != p2
    assert p1.name == "prototype-efficientnet-lite0_minilm"  # recipe 1 keeps the old name
    assert default_anchors_path(img.name, txt.name) == p2

    # recipe 1: the 1000 classes, no groups, hashed as format 1 did
    clf = img.classifier()
    assert r1.count == 1000 and r1.recipe == 1 and r1.anchor_kind == "prototype"
    assert len(r1.blocks) == 1 and r1.blocks[0].group_matrix() is None
    assert r1.manifest["source"]["hypernyms"] == 0
    assert r1.powers == PROTOTYPE_POWERS
    np.testing.assert_array_equal(
        r1.vectors("image"), np.hstack([clf.weight, clf.bias[:, None]]).astype(np.float32)
    )
    assert r1.fingerprint == _legacy_fingerprint(
        r1.vectors("image"), r1.vectors("text"), "softmax", "cosine"
    )

    # opened again for recipe 1: not rebuilt
    mpath = r1.path / "manifest.json"
    before = mpath.stat().st_mtime_ns
    again = ensure_default_anchors(img, txt, r1.path, recipe=1)
    assert again.fingerprint == r1.fingerprint and mpath.stat().st_mtime_ns == before
    assert again.manifest["created_at"] == r1.manifest["created_at"]
    # ... nor is a recipe-1 set from before recipes (format 1, recognised by its powers)
    to_format1(r1.path, tmp_path / "old-default")
    old_m = tmp_path / "old-default" / "manifest.json"
    before = old_m.stat().st_mtime_ns
    old = ensure_default_anchors(img, txt, tmp_path / "old-default", recipe=1)
    assert old.manifest["format_version"] == 1 and old.recipe is None
    assert old_m.stat().st_mtime_ns == before
    assert old.fingerprint == r1.fingerprint and old.count == 1000

    # recipe 2: the classes, then one anchor per WordNet hypernym, as groups
    hyps = hier.hypernyms()
    r2 = ensure_default_anchors(img, txt, tmp_path / "r2", recipe=2)
    assert r2.count == 1000 + len(hyps) and r2.recipe == 2
    assert r2.manifest["source"]["hypernyms"] == len(hyps)
    assert r2.fingerprint != r1.fingerprint
    (blk,) = r2.blocks
    g = blk.group_matrix()
    assert g is not None and g.shape == (1000, len(hyps))
    groups = blk.entry["image"]["groups"]
    assert groups["weight"] == hier.GROUP_WEIGHT and groups["pool"] == hier.GROUP_POOL
    for j in (0, len(hyps) // 2, len(hyps) - 1):
        assert np.flatnonzero(g[:, j]).tolist() == list(hyps[j].classes)
    np.testing.assert_array_equal(r2.vectors("image"), r1.vectors("image"))  # same head
    np.testing.assert_allclose(r2.vectors("text")[:1000], r1.vectors("text"), atol=1e-5)
    pairs = r2.pairs().to_pylist()
    assert [p["wordnet_id"] for p in pairs[1000:]] == [h.wnid for h in hyps]
    assert all(p["class_index"] is None for p in pairs[1000:])
    j = [h.wnid for h in hyps].index("n01503061")  # bird
    assert pairs[1000 + j]["caption"] == "a photo of a bird."
    bird_texts = hier.hypernym_texts(hyps[j], PROTOTYPE_TEMPLATE)
    mean = txt.encode_texts(bird_texts).mean(axis=0)
    np.testing.assert_allclose(r2.vectors("text")[1000 + j], mean / np.linalg.norm(mean), atol=1e-4)
    # a recipe-1 set at this path would be replaced, so a recipe-2 set stays as it is
    before = (r2.path / "manifest.json").stat().st_mtime_ns
    assert ensure_default_anchors(img, txt, r2.path, recipe=2).fingerprint == r2.fingerprint
    assert (r2.path / "manifest.json").stat().st_mtime_ns == before


def test_old_default_spec_rebuilds_recipe_1(
    offline: Offline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection from before recipes: anchors default True, no recipe, the cached set
    gone. It is rebuilt by recipe 1 and matches the recorded fingerprint."""
    from vlmsearch.models import unimodal
    from vlmsearch.models.asif.encoder import AsifEncoder, default_anchors_path
    from vlmsearch.runtime import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    img, txt, r1 = offline.img, offline.txt, offline.r1
    path = default_anchors_path(img.name, txt.name, 1)
    assert path.is_relative_to(cache_dir()) and not path.exists()
    spec = AsifEncoder(r1, img, txt).spec  # type: ignore[arg-type]
    spec["anchors"] = {
        "path": str(path),
        "fingerprint": r1.fingerprint,
        "anchor_kind": "prototype",
        "count": 1000,
        "default": True,
    }  # as 6734f0a recorded it

    loaded = []

    def from_spec(modality: str, s: dict, device: str | None = None):
        # the encoders are the module's (loading them again would only cost time)
        loaded.append(modality)
        enc = img if modality == "image" else txt
        assert unimodal.UnimodalEncoder.identity(s) == enc.identity(enc.spec)
        return enc

    monkeypatch.setattr(unimodal, "unimodal_from_spec", from_spec)
    enc = AsifEncoder.from_spec(spec, device="cpu")
    assert sorted(loaded) == ["image", "text"]
    assert path.is_dir() and enc.anchors.path == path
    assert enc.anchors.count == 1000 and enc.anchors.recipe == 1
    assert enc.anchors.blocks[0].group_matrix() is None
    assert enc.anchors.fingerprint == r1.fingerprint
    assert (enc.p_image, enc.p_text) == (2.0, 16.0)
    assert enc.spec["sha256"] == spec["sha256"]  # the collection's encoder identity holds
    assert enc.spec["anchors"]["default"] is True and enc.spec["anchors"]["recipe"] == 1
    assert not default_anchors_path(img.name, txt.name, 2).exists()

    # the set is there now: a spec with another fingerprint is refused without a model
    wrong = {**spec, "anchors": {**spec["anchors"], "fingerprint": "0" * 64}}
    with pytest.raises(ModelError, match="has changed"):
        AsifEncoder.check_spec(wrong)


# -- 6. CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--no-prototypes", "--prototypes"])
def test_cli_prototype_with_prototypes_flag_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    from vlmsearch.models import unimodal

    loaded = []

    def no_load(name: str, device: str | None = None):
        loaded.append(name)
        raise RuntimeError("no model should be loaded")

    monkeypatch.setattr(unimodal, "load_image_encoder", no_load)
    monkeypatch.setattr(unimodal, "load_text_encoder", no_load)
    out = tmp_path / "out"
    res = run("asif", "anchors", "build", out, "--prototype", flag)
    one_line_error(res, "--prototypes/--no-prototypes", "--from")
    assert loaded == [] and not out.exists()


# -- 7. data anchors, with and without a prototype block ------------------------------------------
def test_data_anchors_without_a_classifier_head(tmp_path: Path) -> None:
    from vlmsearch.models.asif.build import DATA_POWERS, build_data_anchors
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

    img = load_image_encoder(TOWER, device="cpu")
    txt = load_text_encoder(TOWER, device="cpu")
    assert img.classifier() is None
    csv = write_pairs_csv(tmp_path / "data", 4, seed=3, corrupt=False)
    aset, failed = build_data_anchors(tmp_path / "a", img, txt, csv, workers=0)
    assert failed == []
    assert aset.anchor_kind == "data" and aset.count == 8
    assert [b.name for b in aset.blocks] == ["data"]
    assert aset.blocks[0].powers == DATA_POWERS and not aset.raw_image_features
    assert aset.pairs()["block"].to_pylist() == ["data"] * 8
    with pytest.raises(ModelError, match="no classification head"):
        build_data_anchors(tmp_path / "b", img, txt, csv, workers=0, prototypes=True)
    assert not (tmp_path / "b").exists()
    aset, _ = build_data_anchors(tmp_path / "c", img, txt, csv, workers=0, prototypes=False)
    assert [b.name for b in aset.blocks] == ["data"]


def test_data_anchors_with_a_classifier_head_add_a_prototype_block(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    import torch

    from vlmsearch.models.asif.build import (
        DATA_POWERS,
        PROTOTYPE_BLOCK_WEIGHT,
        PROTOTYPE_POWERS,
        build_data_anchors,
    )
    from vlmsearch.models.asif.encoder import AsifEncoder
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

    n_classes = 7  # not 1000: no hypernym groups
    torch.manual_seed(0)
    weights = tmp_path / "head7.pth"
    torch.save(timm.create_model(TIMM_MODEL, pretrained=False, num_classes=n_classes)
               .state_dict(), weights)  # fmt: skip
    img = load_image_encoder(f"timm:{TIMM_MODEL}:{weights}", device="cpu")
    txt = load_text_encoder(TOWER, device="cpu")
    clf = img.classifier()
    assert clf is not None and len(clf.class_names) == n_classes

    csv = write_pairs_csv(tmp_path / "data", 4, seed=4, corrupt=False)
    aset, failed = build_data_anchors(tmp_path / "a", img, txt, csv, workers=0)
    assert failed == []
    assert aset.anchor_kind == "data+prototype" and aset.count == 8 + n_classes
    assert [b.name for b in aset.blocks] == ["data", "prototype"]
    data, proto = aset.blocks
    assert data.count == 8 and proto.count == n_classes
    assert data.similarity("image") == "cosine" and proto.similarity("image") == "softmax"
    assert proto.weight == PROTOTYPE_BLOCK_WEIGHT and proto.group_matrix() is None
    assert data.powers == DATA_POWERS and proto.powers == PROTOTYPE_POWERS
    assert aset.raw_image_features and not aset.uniform_powers
    np.testing.assert_allclose(
        proto.vectors("image"), np.hstack([clf.weight, clf.bias[:, None]]), atol=1e-6
    )
    pairs = aset.pairs()
    assert pairs["anchor"].to_pylist() == list(range(8 + n_classes))
    assert pairs["block"].to_pylist() == ["data"] * 8 + ["prototype"] * n_classes
    assert pairs["caption"].to_pylist()[8:] == [f"a photo of a class_{i}." for i in range(7)]

    # an encoder over it: raw features in, each block with its own powers
    enc = AsifEncoder(aset, img, txt, k=5)
    assert (enc.p_image, enc.p_text) == (None, None) and "per block" in enc.spec["name"]
    pics = [rgb(p) for p in photos(tmp_path / "q", 3, seed=5)]
    raw = img.encode_images(pics, normalize=False)
    got = enc.encode_images(pics)
    np.testing.assert_allclose(got, aset.relative("image", raw, 5, None), atol=1e-5)
    want = np.hstack(
        [
            _hand_cosine(raw, data.vectors("image"), 5, DATA_POWERS["image"]),
            PROTOTYPE_BLOCK_WEIGHT
            * _hand_softmax_block(raw, clf.weight, clf.bias, [], 1.0, 1.0, 5, 2.0),
        ]
    )
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    # data anchors of one image are duplicates, so compare per anchor image
    images = pairs["image"].to_pylist()[:8]
    uniq = sorted(set(images))
    merge = np.zeros((8 + n_classes, len(uniq) + n_classes), np.float32)
    for i, im in enumerate(images):
        merge[i, uniq.index(im)] = 1.0
    merge[8:, len(uniq) :] = np.eye(n_classes)
    np.testing.assert_allclose(got @ merge, want @ merge, atol=1e-4)

    # --no-prototypes: the data block alone
    only, _ = build_data_anchors(tmp_path / "b", img, txt, csv, workers=0, prototypes=False)
    assert only.anchor_kind == "data" and [b.name for b in only.blocks] == ["data"]
    np.testing.assert_allclose(only.vectors("image"), data.vectors("image"), atol=1e-6)
