"""Zero-shot label embeddings are cached on disk per (encoder, labels, templates), and the
built-in templates are data that import nothing heavy (issue 15: 100 labels x 80 templates
took 70 s on every `classify`; `load_templates` imported open_clip)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models import label_cache
from vlmsearch.models.zeroshot import load_templates
from vlmsearch.search import query_encoders

REPO = Path(__file__).resolve().parents[2]
LABELS = ["red", "green", "blue"]

CHILD = """
import json, sys
from vlmsearch.models.zeroshot import load_templates
sizes = [len(load_templates("openai")), len(load_templates("simple"))]
print(json.dumps([sizes, sorted(m for m in ("torch", "open_clip") if m in sys.modules)]))
"""


def test_builtin_templates_import_nothing_heavy() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[80, 7], []]


def test_builtin_templates_are_clips() -> None:
    from open_clip import zero_shot_metadata as zsm

    for name, theirs in (
        ("openai", zsm.OPENAI_IMAGENET_TEMPLATES),
        ("simple", zsm.SIMPLE_IMAGENET_TEMPLATES),
    ):
        ours = load_templates(name)
        assert [t("x {y}") for t in ours] == [t("x {y}") for t in theirs]


@pytest.fixture
def coll_path(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    make_images(root, 6)
    Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")
    return root / ".vlmsearch"


def _no_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("the encoder was built")

    monkeypatch.setattr(query_encoders, "encoder_from_spec", refuse)


def _scores(preds) -> list[tuple[str | None, float | None]]:
    return [(p.label, p.score) for p in preds]


@pytest.mark.parametrize("rule", ["mean", "best"])
def test_repeat_classify_reads_cached_label_embeddings(
    coll_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str
) -> None:
    first = Collection.open(coll_path).classify(LABELS, templates="simple", rule=rule)
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "vlmsearch" / "label-embeddings"
    assert len(list(folder.glob("*.npy"))) == 1 and not list(folder.glob(".*"))
    _no_encoder(monkeypatch)
    again = Collection.open(coll_path).classify(LABELS, templates="simple", rule=rule)
    assert _scores(again) == _scores(first)
    # other labels, other templates: other prompts, so not served from the cache
    with pytest.raises(AssertionError, match="encoder was built"):
        Collection.open(coll_path).classify([*LABELS, "white"], templates="simple", rule=rule)
    with pytest.raises(AssertionError, match="encoder was built"):
        Collection.open(coll_path).classify(LABELS, templates="openai", rule=rule)


def test_damaged_entry_is_recomputed(coll_path: Path) -> None:
    first = Collection.open(coll_path).classify(LABELS, templates="simple")
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "vlmsearch" / "label-embeddings"
    (entry,) = folder.glob("*.npy")
    entry.write_bytes(b"\x93NUMPY garbage")
    again = Collection.open(coll_path).classify(LABELS, templates="simple")
    assert [p.label for p in again] == [p.label for p in first]
    np.testing.assert_allclose(
        [p.score for p in again], [p.score for p in first], rtol=1e-5, atol=1e-6
    )
    assert np.load(entry).ndim == 2  # rewritten whole


def test_key_covers_encoder_and_prompts() -> None:
    spec = {"kind": "open_clip", "arch": TINY, "dim": 64}
    base = label_cache.cache_key(spec, "mean/1", ["a red.", "a blue."])
    assert base != label_cache.cache_key({**spec, "sha256": "x"}, "mean/1", ["a red.", "a blue."])
    assert base != label_cache.cache_key(spec, "mean/1", ["a blue.", "a red."])
    assert base != label_cache.cache_key(spec, "prompts", ["a red.", "a blue."])
