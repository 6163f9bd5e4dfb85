"""ASIF invariants (notes/algorithms.md) on synthetic coupled data, through the stored
anchor-set machinery (FAISS top-k), not a re-implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vlmsearch.models.asif.anchors import AnchorSet, write_anchor_set
from vlmsearch.models.asif.relative import relative_from_topk, relative_representations

D_IMG, D_TXT, LATENT = 48, 24, 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Synthetic:
    """Two 'encoders' that see the same latent through different random maps + noise."""

    def __init__(self, seed: int = 0, noise: float = 0.3) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.a = rng.normal(size=(LATENT, D_IMG))
        self.b = rng.normal(size=(LATENT, D_TXT))
        self.noise = noise

    def latents(self, n: int) -> np.ndarray:
        return self.rng.normal(size=(n, LATENT))

    def image(self, z: np.ndarray) -> np.ndarray:
        return _unit(z @ self.a + self.noise * self.rng.normal(size=(len(z), D_IMG)))

    def text(self, z: np.ndarray) -> np.ndarray:
        return _unit(z @ self.b + self.noise * self.rng.normal(size=(len(z), D_TXT)))


def _anchors(path: Path, img: np.ndarray, txt: np.ndarray, **kw) -> AnchorSet:
    n = len(img)
    pairs = pa.table(
        {
            "anchor": np.arange(n),
            "image": [f"a{i}" for i in range(n)],
            "caption": [f"c{i}" for i in range(n)],
        }
    )
    spec = {"kind": "synthetic", "name": "synthetic", "dim": img.shape[1]}
    return write_anchor_set(
        path,
        anchor_kind="data",
        image_encoder=spec,
        text_encoder={**spec, "dim": txt.shape[1]},
        image_vectors=img,
        text_vectors=txt,
        pairs=pairs,
        **kw,
    )


def _scores(aset: AnchorSet, qi: np.ndarray, qt: np.ndarray, k: int, p: float) -> np.ndarray:
    return aset.relative("image", qi, k, p) @ aset.relative("text", qt, k, p).T


def _accuracy(scores: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == np.arange(len(scores))).mean())


@pytest.fixture(scope="module")
def world():
    return Synthetic(0)


def test_joint_permutation_changes_nothing(world: Synthetic, tmp_path: Path) -> None:
    z = world.latents(300)
    ai, at = world.image(z), world.text(z)
    q = world.latents(40)
    qi, qt = world.image(q), world.text(q)
    perm = np.random.default_rng(1).permutation(300)
    s1 = _scores(_anchors(tmp_path / "a", ai, at), qi, qt, 50, 8)
    s2 = _scores(_anchors(tmp_path / "b", ai[perm], at[perm]), qi, qt, 50, 8)
    np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_k1_is_one_hot(world: Synthetic, tmp_path: Path) -> None:
    z = world.latents(100)
    aset = _anchors(tmp_path / "a", world.image(z), world.text(z))
    q = world.latents(30)
    ri = aset.relative("image", world.image(q), 1, 8)
    rt = aset.relative("text", world.text(q), 1, 8)
    assert ((ri > 0).sum(axis=1) == 1).all() and np.allclose(ri.max(axis=1), 1.0)
    same = ri.argmax(axis=1)[:, None] == rt.argmax(axis=1)[None, :]
    np.testing.assert_allclose(ri @ rt.T, same.astype(np.float32), atol=1e-6)


def test_k_equals_n_p1_is_bilinear_form(tmp_path: Path) -> None:
    # non-negative embeddings, so no similarity is clamped
    rng = np.random.default_rng(3)
    ai, at = _unit(rng.random((64, D_IMG))), _unit(rng.random((64, D_TXT)))
    qi, qt = _unit(rng.random((10, D_IMG))), _unit(rng.random((12, D_TXT)))
    aset = _anchors(tmp_path / "a", ai, at)
    got = _scores(aset, qi, qt, 64, 1)
    a, b = qi @ ai.T, qt @ at.T
    want = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_shuffling_text_anchors_drops_to_chance(world: Synthetic, tmp_path: Path) -> None:
    z = world.latents(2000)
    ai, at = world.image(z), world.text(z)
    q = world.latents(100)
    qi, qt = world.image(q), world.text(q)
    coupled = _accuracy(_scores(_anchors(tmp_path / "a", ai, at), qi, qt, 200, 8))
    shuffled_t = at[np.random.default_rng(2).permutation(len(at))]
    broken = _accuracy(_scores(_anchors(tmp_path / "b", ai, shuffled_t), qi, qt, 200, 8))
    assert coupled > 0.5
    assert broken < 0.06  # chance is 1/100


def test_accuracy_rises_with_anchor_count(world: Synthetic, tmp_path: Path) -> None:
    z = world.latents(4000)
    ai, at = world.image(z), world.text(z)
    q = world.latents(100)
    qi, qt = world.image(q), world.text(q)
    accs = []
    for n in (25, 250, 4000):
        aset = _anchors(tmp_path / f"n{n}", ai[:n], at[:n])
        accs.append(_accuracy(_scores(aset, qi, qt, min(200, n), 8)))
    assert accs[0] < accs[1] < accs[2], accs


def test_faiss_topk_equals_brute_force(world: Synthetic, tmp_path: Path) -> None:
    z = world.latents(500)
    aset = _anchors(tmp_path / "a", world.image(z), world.text(z))
    qi = world.image(world.latents(20))
    k, p = 37, 4.0
    got = aset.relative("image", qi, k, p)
    sims = qi @ aset.vectors("image").T
    want = np.zeros_like(sims)
    for r in range(len(sims)):
        top = np.argsort(-sims[r])[:k]
        want[r, top] = np.clip(sims[r, top], 0, None) ** p
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_k_larger_than_anchor_count(world: Synthetic, tmp_path: Path) -> None:
    z = world.latents(30)
    aset = _anchors(tmp_path / "a", world.image(z), world.text(z))
    qi = world.image(world.latents(5))
    np.testing.assert_allclose(
        aset.relative("image", qi, 1000, 8), aset.relative("image", qi, 30, 8)
    )
    # raw FAISS padding (-1 ids) must not land on the last anchor
    r = relative_representations(aset.index("image"), qi, n_anchors=30, k=30, p=8)
    scores = np.full((1, 4), -3.4e38, np.float32)
    scores[0, :2] = [0.9, 0.5]
    ids = np.array([[3, 7, -1, -1]])
    rel = relative_from_topk(scores, ids, 30, 1.0)
    assert rel[0, 29] == 0 and np.count_nonzero(rel) == 2
    assert r.shape == (5, 30)


def test_negative_similarities_are_clamped_before_an_even_power() -> None:
    rel = relative_from_topk(np.array([[0.5, -0.9]]), np.array([[0, 1]]), 2, 2.0)
    np.testing.assert_allclose(rel, [[1.0, 0.0]])


def test_softmax_side_equals_powered_softmax_restricted_to_topk() -> None:
    logits = np.array([[2.0, 1.0, 0.5, -1.0]])
    order = np.argsort(-logits[0])[:3]
    rel = relative_from_topk(logits[:, order], order[None], 4, 2.0, "softmax")
    sm = np.exp(logits[0]) / np.exp(logits[0]).sum()
    want = np.zeros(4)
    want[order] = sm[order] ** 2
    np.testing.assert_allclose(rel[0], want / np.linalg.norm(want), atol=1e-6)


def test_anchor_set_round_trip_and_refusals(world: Synthetic, tmp_path: Path) -> None:
    from vlmsearch.errors import CollectionError

    z = world.latents(10)
    aset = _anchors(tmp_path / "a", world.image(z), world.text(z))
    again = AnchorSet.open(tmp_path / "a")
    assert again.count == 10 and again.fingerprint == aset.fingerprint
    assert again.pairs().num_rows == 10 and again.info()["anchor_kind"] == "data"
    with pytest.raises(CollectionError, match="anchor set"):
        _anchors(tmp_path / "a", world.image(z), world.text(z))  # exists, no overwrite
    other = _anchors(tmp_path / "a", world.image(z[:5]), world.text(z[:5]), overwrite=True)
    assert other.count == 5 and other.fingerprint != aset.fingerprint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    with pytest.raises(CollectionError, match="no anchor set"):
        AnchorSet.open(tmp_path / "missing")
