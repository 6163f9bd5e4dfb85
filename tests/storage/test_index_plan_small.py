"""A collection too small to train IVF/PQ is searched exactly, with no FAISS warnings, and
keeps the requested kind for when it has grown."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import TINY, make_images
from vlmsearch.storage.ann.plan import min_training_points, plan_index


def test_plan_is_flat_until_every_centroid_has_39_points() -> None:
    assert min_training_points("IVF4,Flat", 32) == 4 * 39
    assert min_training_points("IVF4,PQ4x8", 32) == 256 * 39  # PQ codebooks: 256 centroids
    assert min_training_points("Flat", 32) == 0
    assert plan_index("IVF4,Flat", 155, 32).factory == "Flat"
    assert plan_index("IVF4,Flat", 156, 32).factory == "IVF4,Flat"
    small = plan_index("ivfpq", 5000, 512)
    assert small.factory == "Flat" and "too few" in small.reason


def test_tiny_collection_with_ivf_prints_no_faiss_warning(tmp_path) -> None:
    root = tmp_path / "photos"
    make_images(root, 7)
    for spec in ("ivf", "IVF4,Flat", "ivfpq"):
        r = subprocess.run(
            ["vlmsearch", "index", str(root), "--model", TINY, "--workers", "0", "-q",
             "--index", spec, "--rebuild"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "WARNING" not in r.stderr and "clustering" not in r.stderr, r.stderr
        manifest = json.loads((root / ".vlmsearch" / "manifest.json").read_text())
        assert manifest["index"]["factory"] == "Flat"
        assert manifest["index"]["requested"] == spec
