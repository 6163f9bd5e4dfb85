"""MAGIC decoding reductions (notes/algorithms.md) on a tiny random GPT-2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_gpt2
from vlmsearch.caption.magic import MagicSettings, generate, magic_scores

WORDS = (
    "<eos> a picture of the cat dog red blue sky car on in with and small big house tree "
    "person street water two three"
).split()


@pytest.fixture(scope="module")
def lm():
    return tiny_gpt2(list(WORDS))


def words(tok, ids):
    return [tok.convert_ids_to_tokens(i) for i in ids]


def stub_scorer(rng_seed: int = 0):
    rng = np.random.default_rng(rng_seed)
    table = {w: float(rng.uniform(-0.2, 0.4)) for w in WORDS}

    def score(texts):  # deterministic "cosine" from the last word of each text
        return np.array([table.get(t.split()[-1] if t.split() else "", 0.0) for t in texts])

    return score


def test_k1_alpha_beta_zero_and_method_greedy_agree(lm) -> None:
    model, tok = lm
    sc = stub_scorer()
    greedy = generate(model, tok, sc, MagicSettings(method="greedy", prompt="a picture of"))
    k1 = generate(model, tok, sc, MagicSettings(k=1, prompt="a picture of"))
    zero = generate(model, tok, sc, MagicSettings(alpha=0, beta=0, prompt="a picture of"))
    assert greedy.token_ids == k1.token_ids == zero.token_ids
    # greedy is the argmax of the LM at every step
    assert all(s.chosen == s.candidates[0] for s in zero.steps)


def test_beta_zero_is_contrastive_search(lm) -> None:
    model, tok = lm
    a = generate(model, tok, None, MagicSettings(method="contrastive", prompt="a picture of"))
    b = generate(model, tok, stub_scorer(), MagicSettings(beta=0.0, prompt="a picture of"))
    assert a.token_ids == b.token_ids
    for s in a.steps:  # each choice maximises (1-a) p - a * penalty
        score = 0.9 * np.array(s.lm_prob) - 0.1 * np.array(s.penalty)
        assert s.chosen == s.candidates[int(np.argmax(score))]


def test_magic_scores_sum_to_one(lm) -> None:
    model, tok = lm
    cap = generate(model, tok, stub_scorer(), MagicSettings(k=8, prompt="a picture of"))
    for s in cap.steps:
        assert abs(sum(s.magic) - 1.0) < 1e-9 and min(s.magic) >= 0
    np.testing.assert_allclose(magic_scores(np.array([0.1, 0.3, 0.2])).sum(), 1.0)


def test_strongly_favoured_token_is_chosen_whenever_a_candidate(lm) -> None:
    model, tok = lm
    cat = tok.convert_tokens_to_ids("cat")

    def favour_cat(texts):  # each extra "cat" adds 0.2 cosine (so EOS, which adds no word, loses)
        return np.array([0.2 * t.split().count("cat") for t in texts])

    cap = generate(model, tok, favour_cat, MagicSettings(k=12, prompt="a picture of"))
    seen = [s for s in cap.steps if cat in s.candidates]
    assert seen, "the tiny LM never offered 'cat' among 12 candidates"
    assert all(s.chosen == cat for s in seen)


def test_cached_path_equals_recomputing(lm) -> None:
    model, tok = lm
    sc = stub_scorer(3)
    st = MagicSettings(k=10, max_tokens=12, prompt="a picture of")
    cached = generate(model, tok, sc, st, use_cache=True)
    fresh = generate(model, tok, sc, st, use_cache=False)
    assert cached.token_ids == fresh.token_ids
    for a, b in zip(cached.steps, fresh.steps, strict=True):
        np.testing.assert_allclose(a.penalty, b.penalty, atol=1e-4)
        np.testing.assert_allclose(a.lm_prob, b.lm_prob, atol=1e-5)


def test_caption_is_cut_at_first_eos_and_excludes_prompt(lm) -> None:
    model, tok = lm
    cap = generate(model, tok, None, MagicSettings(method="greedy", prompt="a picture of"))
    ids = cap.token_ids
    cut = ids[: ids.index(0)] if 0 in ids else ids
    assert cap.text.split() == words(tok, cut)
    assert len(ids) == 16  # every step runs


# -- captioning a collection (stored vectors, resumable column) and files ------------------------


@pytest.fixture(scope="module")
def lm_dir(lm, tmp_path_factory):
    model, tok = lm
    d = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_stored_vector_gives_the_same_caption_as_encoding(lm, image_dir, tiny_encoder) -> None:
    from PIL import Image

    from tests.conftest import TINY
    from vlmsearch import Collection
    from vlmsearch.caption.captioner import Captioner
    from vlmsearch.ingest.options import IngestOptions

    coll = Collection.index(image_dir, model=TINY, options=IngestOptions(workers=0))
    cap = Captioner(coll.encoder, lm, MagicSettings(k=8, max_tokens=6, prompt="a picture of"))
    row = coll.table.to_pylist()[0]
    stored = cap.caption_vector(coll.vectors.dense(np.asarray([row["id"]]))[0])
    with Image.open(image_dir / row["path"]) as im:
        fresh = cap.caption_images([im.convert("RGB")])[0]
    assert stored.token_ids == fresh.token_ids


def test_caption_cli_writes_a_resumable_column(lm_dir, image_dir) -> None:
    import json

    from typer.testing import CliRunner

    from tests.conftest import TINY
    from vlmsearch import Collection
    from vlmsearch.cli.app import app

    run = CliRunner().invoke
    res = run(app, ["index", str(image_dir), "--model", TINY, "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    coll_path = str(image_dir / ".vlmsearch")
    args = ["caption", "-c", coll_path, "--lm", str(lm_dir), "-k", "6", "--max-tokens", "5",
            "--prompt", "a picture of", "--write-column", "caption", "--json"]  # fmt: skip
    res = run(app, [*args, "--where", "path LIKE 'img000%'"])
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)
    assert len(first) == 10 and all(r["caption"] is not None for r in first)
    coll = Collection.open(coll_path)
    assert coll.manifest["columns"]["caption"]["kind"] == "caption"
    assert coll.manifest["columns"]["caption"]["k"] == 6
    captioned = {r["id"]: r["caption"] for r in coll.table.to_pylist() if r["caption"] is not None}
    assert captioned == {r["id"]: r["caption"] for r in first}
    # a second run resumes: only the rows without a caption are done
    res = run(app, args)
    second = json.loads(res.stdout)
    assert {r["id"] for r in second}.isdisjoint(captioned) and len(second) == 5
    coll = Collection.open(coll_path)
    assert not metadata_nulls(coll, "caption")
    # the decoding settings are kept per row, and the captions are embedded for search
    settings = json.loads(coll.table.to_pylist()[0]["caption_settings"])
    assert settings["k"] == 6 and settings["max_tokens"] == 5 and settings["method"] == "magic"
    assert coll.manifest["text_vectors"]["caption"]["rows"] == 15
    some = second[0]
    res = run(app, ["search", some["caption"], "-c", coll_path, "--text-column", "caption",
                    "--json", "-k", "15"])  # fmt: skip
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)
    assert found[0]["caption"] == some["caption"] and len(found) == 15
    # the first-run form: the column does not exist yet when --where names it
    res = run(app, ["caption", "-c", coll_path, "--lm", str(lm_dir), "-k", "3", "--max-tokens",
                    "2", "--where", "alt IS NULL", "--write-column", "alt", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 15
    # bad settings and bad target columns fail at once, with one line and no lost column
    res = run(app, ["classify", "-c", coll_path, "--labels", "a,b", "--write-column", "label"])
    assert res.exit_code == 0, res.output
    for extra, needle in [
        (["--method", "foo"], "unknown method 'foo'"),
        (["--alpha", "2"], "[0, 1]"),
        (["--beta", "-1"], "beta"),
        (["--write-column", "width"], "built in"),
        (["--write-column", "bad name"], "plain identifier"),
        (["--write-column", "label"], "already holds zero-shot label"),
    ]:
        res = run(app, ["caption", "-c", coll_path, "--lm", str(lm_dir), *extra])
        assert res.exit_code == 1 and needle in res.output, (extra, res.output)
        assert "Traceback" not in res.output
    labels = [r["label"] for r in Collection.open(coll_path).table.to_pylist()]
    assert set(labels) <= {"a", "b"} and None not in labels
    res = run(app, ["caption", "-c", coll_path, "--lm", str(tmp_missing(lm_dir))])
    assert res.exit_code == 1 and "language model" in res.output and "Traceback" not in res.output


def metadata_nulls(coll, column: str) -> list[int]:
    return [r["id"] for r in coll.table.to_pylist() if r[column] is None]


def tmp_missing(path):
    return path.parent / "no-such-model"


def test_trimmed_text_tower_equals_the_padded_one(tiny_encoder, monkeypatch) -> None:
    """The scorer cuts the tokenizer's padding and runs a prefix shared by every text only
    once; neither may change the embeddings."""
    import torch

    from vlmsearch.models.encoders import openclip_text

    assert openclip_text.can_trim(tiny_encoder.model)
    assert openclip_text.can_share_prefix(tiny_encoder.model)
    stem = "a picture of a brown dog sitting on the grass next to"
    batches = {
        "no shared prefix": ["a", "A picture of a dog on a red couch", "two cats " * 12, ""],
        "shared prefix": [f"{stem} {w}" for w in ("a", "the red car", "it", "a tree . and")]
        + [stem],
        "one text": [stem],
    }
    calls = {"shared": 0}
    real = openclip_text.encode_text_shared_prefix

    def counting(model, tokens):
        calls["shared"] += 1
        return real(model, tokens)

    monkeypatch.setattr(openclip_text, "encode_text_shared_prefix", counting)
    for name, texts in batches.items():
        tokens = tiny_encoder._tokenizer(texts)
        with torch.inference_mode():
            padded = tiny_encoder.model.encode_text(tokens, normalize=True).numpy()
        got = tiny_encoder.encode_texts(texts)
        np.testing.assert_allclose(got, padded, atol=1e-5, err_msg=name)
    assert calls["shared"] == 3
    monkeypatch.setattr(openclip_text, "SHARE_PREFIX", False)
    texts = batches["shared prefix"]
    with torch.inference_mode():
        shared = openclip_text.encode_text_shared_prefix(
            tiny_encoder.model, tiny_encoder._tokenizer(texts)
        )
    np.testing.assert_allclose(tiny_encoder.encode_texts(texts), shared.numpy(), atol=1e-5)


def test_interrupted_run_keeps_every_caption_made(lm, image_dir) -> None:
    from tests.conftest import TINY
    from vlmsearch import Collection
    from vlmsearch.caption.captioner import Captioner
    from vlmsearch.ingest.options import IngestOptions

    coll = Collection.index(image_dir, model=TINY, options=IngestOptions(workers=0))
    cap = Captioner(coll.encoder, lm, MagicSettings(k=3, max_tokens=2, prompt="a picture of"))
    real, made = cap.caption_vector, []

    def interrupt_after_five(v):
        if len(made) == 5:
            raise KeyboardInterrupt
        made.append(1)
        return real(v)

    cap.caption_vector = interrupt_after_five
    with pytest.raises(KeyboardInterrupt):
        coll.caption(cap, write_column="caption", commit_every=16)
    again = Collection.open(coll.path)
    assert len([r for r in again.table.to_pylist() if r["caption"]]) == 5
    assert len(again.caption_targets(write_column="caption")) == len(again) - 5


def test_caption_refusals_before_any_work(lm, image_dir) -> None:
    from tests.conftest import TINY
    from vlmsearch import Collection
    from vlmsearch.caption.magic import generate
    from vlmsearch.errors import CollectionError, QueryError
    from vlmsearch.ingest.options import IngestOptions

    coll = Collection.index(image_dir, model=TINY, options=IngestOptions(workers=0))
    with coll.layout.lock(), pytest.raises(CollectionError, match="being written"):
        coll.caption_targets(write_column="caption")  # another writer holds the collection
    with pytest.raises(QueryError, match="prompt must not be empty"):
        MagicSettings(prompt=" ").effective()
    model, tok = lm
    limit = model.config.n_positions
    with pytest.raises(QueryError, match="context"):
        generate(model, tok, None, MagicSettings(method="greedy", max_tokens=limit))
    coll._write_text_column("caption", {int(coll.vectors.ids[0]): "a cat"}, {"lm": "x"})
    coll = Collection.open(coll.path)
    with pytest.raises(QueryError, match="text columns: ") as refused:
        coll.search("x", text_column="caption_settings")
    listed = str(refused.value).rsplit("text columns: ", 1)[1].rstrip(")").split(", ")
    assert "caption" in listed and "caption_settings" not in listed
    with pytest.raises(QueryError, match="no text column ''"):
        coll.search("x", text_column="")


def test_caption_paths_report_unreadable_files_and_go_on(lm_dir, image_dir, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from tests.conftest import TINY
    from vlmsearch.cli.app import app

    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "good.png").write_bytes((image_dir / "img0001.png").read_bytes())
    opts = ["--lm", str(lm_dir), "-k", "3", "--max-tokens", "2", "--model", TINY, "--json"]
    res = CliRunner().invoke(app, ["caption", str(folder), *opts])
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).name: r for r in json.loads(res.stdout)}
    assert rows["good.png"]["caption"] and "error" not in rows["good.png"]
    assert rows["broken.jpg"]["caption"] is None and rows["broken.jpg"]["error"]
    res = CliRunner().invoke(app, ["caption", str(folder), "--overwrite", *opts])
    assert res.exit_code == 1 and "need --collection" in res.output
