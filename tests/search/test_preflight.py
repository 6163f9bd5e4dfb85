"""Every argument and path is checked before a model is built (issue 15: a missing
``--image``, a ``--model`` mismatch or ``--write-column width`` took 8-16 s to refuse).

The encoder builders are replaced by ones that fail loudly, so each test shows that the
refusal came first -- not how long it took.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.errors import ModelError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.search import query_encoders

runner = CliRunner()


class Built(AssertionError):
    """An encoder was built although the arguments were wrong."""


@pytest.fixture
def coll_path(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    make_images(root, 6)
    Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")
    return root / ".vlmsearch"


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise Built("an encoder was built before the arguments were checked")

    monkeypatch.setattr(query_encoders, "encoder_from_spec", refuse)
    monkeypatch.setattr(query_encoders, "load_encoder", refuse)


def one_line_error(res, *needles: str) -> None:
    assert not isinstance(res.exception, Built), res.exception
    assert res.exit_code == 1, (res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_bad_query_images_are_refused_before_the_encoder(
    coll_path: Path, tmp_path: Path, no_models: None
) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    for bad, needle in ((tmp_path / "missing.jpg", "cannot read"), (junk, str(junk))):
        one_line_error(run("search", "--image", bad, "-c", coll_path), "query image", needle)
        # also when a valid text comes first, and as a negative image
        one_line_error(run("search", "red", "--negative-image", bad, "-c", coll_path), needle)
    one_line_error(run("search", "--image", tmp_path, "-c", coll_path), "query image")


def test_search_arguments_are_refused_before_the_encoder(
    coll_path: Path, no_models: None
) -> None:
    c = ("-c", coll_path)
    one_line_error(run("search", "red", "--text-column", "nope", *c), "no text column 'nope'")
    one_line_error(run("search", "red", "--where", "width >", *c))
    one_line_error(run("search", "red", "--rerank", "bogus", *c), "unknown reranker 'bogus'")
    one_line_error(run("search", "red", "--rerank", "region", "--rerank-top", "0", *c))
    one_line_error(run("search", "red", "--model", f"{TINY}/sometag", *c), "model mismatch")


def test_classify_arguments_are_refused_before_the_encoder(
    coll_path: Path, tmp_path: Path, no_models: None
) -> None:
    c = ("-c", coll_path)
    one_line_error(
        run("classify", "--labels", "a,b", "--write-column", "width", *c), "'width' is built in"
    )
    one_line_error(run("classify", "--labels", "a,b", "--templates", tmp_path / "none", *c))
    one_line_error(run("classify", "--labels", "a,b", "--rule", "worst", *c), "unknown rule")


def test_model_checks_need_no_model(coll_path: Path, tmp_path: Path, no_models: None) -> None:
    coll = Collection.open(coll_path)
    other = tmp_path / "other.pt"
    other.write_bytes(b"some other weights")
    with pytest.raises(ModelError, match="model mismatch"):
        coll.check_model(f"{TINY}:{other}")  # compared by the file's sha256
    with pytest.raises(ModelError, match="checkpoint not found"):
        coll.check_model(f"{TINY}:{tmp_path / 'absent.pt'}")
    coll.check_model(TINY)  # the collection's own model: accepted without building it
    assert coll._encoder is None
    # another kind of collection (as ASIF): the kinds differ, so nothing needs building
    coll.manifest["encoder"] = {**coll.manifest["encoder"], "kind": "asif", "name": "asif(x)"}
    with pytest.raises(ModelError, match=r"built with asif\(x\), but the query asks for ViT"):
        coll.check_model("ViT-B-32")
