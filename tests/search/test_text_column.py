"""Searching a text column (captions) by embedding, alone or fused with image vectors.

Uses the tiny random open_clip model: its text embeddings carry no meaning, so the
checks are about equalities (a query equal to a caption finds it, fused scores equal
the formula, stored vectors equal fresh encodings), not about semantics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.errors import QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage.column_vectors import TextVectors, refresh

WORDS = ["red", "green", "blue", "yellow", "purple", "orange"]


def caption_of(j: int) -> str:
    return f"a {WORDS[j % len(WORDS)]} square with {j} dots on a wooden table"


@pytest.fixture
def captioned(tmp_path: Path) -> Collection:
    """15 images; all but the last three have a caption in column ``caption``."""
    root = tmp_path / "photos"
    make_images(root, 15)
    coll = Collection.index(root, model=TINY, options=IngestOptions(workers=0))
    ids = coll.vectors.ids
    coll._write_text_column(
        "caption", {int(i): caption_of(j) for j, i in enumerate(ids[:12])}, {"lm": "test"}
    )
    return Collection.open(coll.path)


def caption_map(coll: Collection) -> dict[int, str]:
    return {r["id"]: r["caption"] for r in coll.table.to_pylist() if r["caption"] is not None}


def test_query_equal_to_a_caption_finds_its_image_first(captioned: Collection) -> None:
    caps = caption_map(captioned)
    for target in list(caps)[:4]:
        hits = captioned.search(caps[target], text_column="caption", k=3)
        assert hits[0].id == target
        assert hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 storage
        assert hits[0].extra["caption"] == caps[target]
        assert hits[0].scores == {"caption": hits[0].score}
    # rows without a caption are no candidates when the text alone is searched
    all_hits = captioned.search("anything", text_column="caption", k=50)
    assert {h.id for h in all_hits} == set(caps)


def test_embeddings_are_stored_once_and_equal_fresh_encodings(captioned: Collection) -> None:
    caps = caption_map(captioned)
    captioned.search("a red square", text_column="caption")
    entry = captioned.manifest["text_vectors"]["caption"]
    assert entry["rows"] == len(caps) and captioned.layout.file(entry["file"]).is_file()
    stored = TextVectors.read(captioned.layout.file(entry["file"]))
    assert stored.ids.tolist() == sorted(caps)
    fresh = captioned.encoder.encode_texts([caps[i] for i in stored.ids.tolist()])
    np.testing.assert_allclose(stored.vectors.astype(np.float32), fresh, atol=2e-3)

    # a new process reuses the file: only the query is encoded
    again = Collection.open(captioned.path)
    calls: list[int] = []
    real = again.encoder.encode_texts
    again.encoder.encode_texts = lambda texts: calls.append(len(texts)) or real(texts)
    again.search("a red square", text_column="caption")
    assert calls == [1]


def test_changed_and_removed_captions_are_the_only_work(captioned: Collection) -> None:
    captioned.search("x", text_column="caption")
    caps = caption_map(captioned)
    changed, removed = sorted(caps)[2], sorted(caps)[5]
    captioned._write_text_column("caption", {changed: "a new caption entirely"}, {"lm": "t"})
    captioned._write_text_column("caption", {removed: None}, {"lm": "t"})  # type: ignore[dict-item]
    coll = Collection.open(captioned.path)
    calls: list[list[str]] = []
    real = coll.encoder.encode_texts
    coll.encoder.encode_texts = lambda texts: calls.append(list(texts)) or real(texts)
    hits = coll.search("a new caption entirely", text_column="caption", k=50)
    assert calls == [["a new caption entirely"], ["a new caption entirely"]]  # query, then row
    assert hits[0].id == changed and removed not in {h.id for h in hits}
    assert coll.manifest["text_vectors"]["caption"]["rows"] == len(caps) - 1


def test_refresh_keeps_id_order_when_rows_are_added_between_stored_ones() -> None:
    def enc(texts: list[str]) -> np.ndarray:
        return np.asarray([[len(t), t.count("a"), 1.0] for t in texts], np.float32)

    stored, n = refresh(
        TextVectors.empty(3, False), np.array([5, 1, 3]), ["aa", "b", "ccc"], enc, False
    )
    assert n == 3 and stored.ids.tolist() == [1, 3, 5]
    ids, texts = np.array([7, 3, 2, 1, 5]), ["aaaa", "ccc", "a", "changed", "aa"]
    new, n = refresh(stored, ids, texts, enc, False)
    assert n == 3  # 7, 2 and the changed 1
    assert new.ids.tolist() == [1, 2, 3, 5, 7]
    by_id = dict(zip(ids.tolist(), texts, strict=True))
    np.testing.assert_array_equal(
        new.vectors.astype(np.float32), enc([by_id[i] for i in new.ids.tolist()])
    )


def test_fused_score_is_the_weighted_sum(captioned: Collection) -> None:
    caps = caption_map(captioned)
    query = caps[sorted(caps)[0]]
    q = captioned.encoder.encode_texts([query])[0]
    ids = captioned.vectors.ids
    image = captioned.vectors.get(ids) @ q
    tv = captioned.text_vectors("caption")
    text = np.zeros(len(ids), np.float32)
    text[np.searchsorted(ids, tv.ids)] = tv.scores(q)
    for w in (0.0, 0.3, 0.5, 0.9):
        hits = captioned.search(query, text_column="caption", text_weight=w, k=len(ids))
        want = w * text + (1 - w) * image
        got = {h.id: h.score for h in hits}
        assert set(got) == set(ids.tolist())  # uncaptioned rows still compete on the image side
        np.testing.assert_allclose([got[i] for i in ids.tolist()], want, atol=1e-5)
        for h in hits:
            assert h.scores is not None and set(h.scores) == {"caption", "image"}
    image_only = captioned.search(query, text_column="caption", text_weight=0.0, k=5)
    plain = captioned.search(query, k=5)
    assert [h.id for h in image_only] == [h.id for h in plain]


def test_large_collection_path_matches_exact(captioned: Collection, monkeypatch) -> None:
    caps = caption_map(captioned)
    query = caps[sorted(caps)[3]]
    exact = captioned.search(query, text_column="caption", text_weight=0.4, k=5)
    import vlmsearch.search.vector_search as vector_search

    monkeypatch.setattr(vector_search, "EXACT_SUBSET_MAX", 0)  # union-of-candidates path
    approx = captioned.search(query, text_column="caption", text_weight=0.4, k=5)
    assert [h.id for h in approx] == [h.id for h in exact]
    np.testing.assert_allclose([h.score for h in approx], [h.score for h in exact], atol=1e-6)


def test_where_filter_applies_to_text_search(captioned: Collection) -> None:
    caps = caption_map(captioned)
    target = sorted(caps)[1]
    hits = captioned.search(caps[target], text_column="caption", where=f"id <> {target}", k=50)
    assert target not in {h.id for h in hits} and len(hits) == len(caps) - 1


def test_bad_columns_and_weights_are_clear_errors(captioned: Collection) -> None:
    with pytest.raises(QueryError, match="no text column 'nope'.*caption"):
        captioned.search("x", text_column="nope")
    with pytest.raises(QueryError, match="no text column 'width'"):
        captioned.search("x", text_column="width")
    with pytest.raises(QueryError, match=r"\[0, 1\]"):
        captioned.search("x", text_column="caption", text_weight=1.5)


def test_other_encoder_means_re_embedding(captioned: Collection) -> None:
    captioned.search("x", text_column="caption")
    m = json.loads(captioned.layout.manifest_path.read_text())
    m["text_vectors"]["caption"]["encoder"] = {"kind": "open_clip", "arch": "something-else"}
    captioned.layout.manifest_path.write_text(json.dumps(m))
    coll = Collection.open(captioned.path)
    calls: list[int] = []
    real = coll.encoder.encode_texts
    coll.encoder.encode_texts = lambda texts: calls.append(len(texts)) or real(texts)
    coll.search("x", text_column="caption")
    assert calls == [1, 12]


def test_read_only_collection_still_searches_with_a_note(
    captioned: Collection, monkeypatch
) -> None:
    def refuse(*_a, **_k):
        raise OSError("read-only file system")

    monkeypatch.setattr(Collection, "_commit_text_vectors", refuse)
    caps = caption_map(captioned)
    target = sorted(caps)[0]
    hits = captioned.search(caps[target], text_column="caption", k=1)
    assert hits[0].id == target
    assert captioned.notices and "not saved" in captioned.notices[0]


def test_cli_text_column_json_csv_and_table(captioned: Collection) -> None:
    runner = CliRunner()
    caps = caption_map(captioned)
    target = sorted(caps)[4]
    base = ["search", caps[target], "-c", str(captioned.path), "--text-column", "caption"]
    res = runner.invoke(app, [*base, "--json", "-k", "3"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["id"] == target and rows[0]["caption"] == caps[target]
    assert set(rows[0]["scores"]) == {"caption"}
    res = runner.invoke(app, [*base, "--text-weight", "0.5", "--csv", "-k", "3"])
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0].split(",")
    assert "score_caption" in header and "score_image" in header
    res = runner.invoke(app, [*base, "-k", "2"])
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0].split()
    assert header[-1] == "caption" and "wooden" in res.stdout  # the caption, folded to width
    res = runner.invoke(app, [*base, "--text-weight", "2"])
    assert res.exit_code == 1 and "[0, 1]" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["search", "x", "-c", str(captioned.path), "--text-column", "nope"])
    assert res.exit_code == 1 and "no text column" in res.output


def test_text_column_on_an_asif_collection(tmp_path: Path) -> None:
    """Sparse (ASIF) collections store sparse caption embeddings and search them."""
    from tests.cli_helpers import ok, run
    from tests.models.test_asif_collection import build_anchors, photos, write_pairs_csv

    csv = write_pairs_csv(tmp_path / "anchor-data", 24, seed=1, corrupt=False)
    ok(build_anchors(tmp_path / "anchors", csv, "-q"))
    root = tmp_path / "photos"
    photos(root, 6, seed=2)
    ok(run("index", root, "--anchors", tmp_path / "anchors", "--asif-k", 16, "--workers", 0, "-q"))
    coll = Collection.open(root / ".vlmsearch")
    assert coll.sparse
    ids = coll.vectors.ids
    coll._write_text_column("caption", {int(i): caption_of(j) for j, i in enumerate(ids)}, {})
    coll = Collection.open(coll.path)
    hits = coll.search(caption_of(3), text_column="caption", k=2)
    assert hits[0].id == int(ids[3]) and hits[0].score == pytest.approx(1.0, abs=5e-3)
    tv = TextVectors.read(coll.layout.file(coll.manifest["text_vectors"]["caption"]["file"]))
    assert hasattr(tv.vectors, "tocsr") and tv.vectors.nnz <= 16 * len(ids)
    fused = coll.search(caption_of(3), text_column="caption", text_weight=0.5, k=len(ids))
    assert len(fused) == len(ids)
