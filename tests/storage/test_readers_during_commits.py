"""Readers never fail because a concurrent commit collected the generation they opened
(issue 14, item 10).

The stress test: a writer subprocess commits as fast as it can (index runs that add a
file, every third one a ``--rebuild``, each followed by three ``classify --write-column``
commits); readers in this process open the collection, wait a moment (as the CLI does
while its encoder loads) and search, in a loop. VLMS_STRESS_SECONDS sets its length;
VLMS_STRESS_RETAIN (the writer's retention, seconds) and VLMS_STRESS_NO_RETRY=1 (readers
do not move to a newer commit) measure each half of the fix alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage import gc, snapshot
from vlmsearch.storage.integrity import MissingFileError
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.reader import CollectionReader

WRITER = """
import sys, time
from pathlib import Path
from tests.conftest import make_images
from vlmsearch import Collection
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.encoders import load_encoder
root, model, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if sys.argv[4]:
    from vlmsearch.storage import gc
    gc.RETAIN_SECONDS = float(sys.argv[4])
enc = load_encoder(model, device="cpu")
opts = dict(batch_size=8, workers=0, commit_every=1)
print("ready", flush=True)
end, n = time.time() + seconds, 0
while time.time() < end:
    make_images(root / "new", 1, prefix=f"w{n}-")
    o = IngestOptions(**opts, rebuild=n % 3 == 2)
    coll = Collection.index(root, encoder=enc, options=o, text_onnx=False)
    for _ in range(3):
        coll.classify(["red", "blue"], write_column="colour")
    n += 1
print(n)
"""


def _reader(path: Path, stop: threading.Event, errors: list[str], counts: list[int]) -> None:
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    while not stop.is_set():
        try:
            coll = Collection(Layout(path), device="cpu")
            time.sleep(float(rng.uniform(0, 1.0)))  # the CLI loads its encoder here
            q = rng.standard_normal(coll.dim).astype(np.float32)
            where = "width > 0" if rng.random() < 0.3 else None  # a filter scans the vectors
            hits = coll.search_vector(q / np.linalg.norm(q), k=3, where=where)
            assert len(hits) == 3
            counts.append(1)
        except Exception as e:  # noqa: BLE001 -- every failure is counted and shown
            errors.append(f"{type(e).__name__}: {e}")


def test_readers_survive_rapid_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    make_images(root, 8)
    opts = IngestOptions(batch_size=8, workers=0)
    coll = Collection.index(root, model=TINY, options=opts, device="cpu")
    seconds = float(os.environ.get("VLMS_STRESS_SECONDS", "12"))
    retain = os.environ.get("VLMS_STRESS_RETAIN", "")
    if os.environ.get("VLMS_STRESS_NO_RETRY"):
        monkeypatch.setattr(CollectionReader, "load_current", lambda self, load: load())
        monkeypatch.setattr(snapshot, "ATTEMPTS", 1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), TINY, str(seconds), retain],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    stop = threading.Event()
    errors: list[str] = []
    counts: list[int] = []
    readers = [
        threading.Thread(target=_reader, args=(coll.path, stop, errors, counts)) for _ in range(3)
    ]
    for t in readers:
        t.start()
    try:
        out, _ = writer.communicate(timeout=seconds + 120)
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert writer.returncode == 0
    runs = int(out.strip())
    print(f"writer runs {runs}, reader searches {len(counts)}, failures {len(errors)}")
    assert runs >= 3 and len(counts) >= 20
    assert errors == [], errors[:3]


def test_reader_moves_to_the_newer_commit_when_its_files_are_collected(
    image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: a reader that opened a commit and loads lazily after that commit's
    files were collected (retention 0 here) searches the newer commit instead of failing."""
    monkeypatch.setattr(gc, "RETAIN_SECONDS", 0.0)
    opts = IngestOptions(batch_size=8, workers=0)
    coll = Collection.index(image_dir, model=TINY, options=opts, device="cpu")
    reader = Collection(Layout(coll.path), device="cpu")  # manifest and table only so far
    filtered = Collection(Layout(coll.path), device="cpu")
    old = [coll.path / "vectors" / f"{s}.f16.npy" for s in coll.manifest["shards"]]
    make_images(image_dir / "more", 2)
    opts = IngestOptions(batch_size=8, workers=0, rebuild=True)
    coll = Collection.index(image_dir, model=TINY, options=opts, device="cpu")
    coll.classify(["red", "blue"], write_column="colour")
    assert not any(p.exists() for p in old)  # the reader's generation is gone
    q = coll.vectors.vectors[0].astype(np.float32)
    hits = reader.search_vector(q, k=3)
    assert len(hits) == 3 and hits[0].score > 0.99  # found itself (or its twin in more/)
    assert {h.id for h in hits} <= set(coll.vectors.ids.tolist())  # the new commit's ids
    assert reader.manifest["generation"] == coll.manifest["generation"]
    assert len(reader.table) == 17 and not reader.index_is_stale
    # a filter computed on the old table is computed again on the new one (a rebuild
    # gave every file a new id)
    hits = filtered.search_vector(q, k=3, where="width > 0")
    assert len(hits) == 3 and hits[0].score > 0.99 and filtered.moves == 1


def test_a_missing_file_without_a_newer_commit_is_still_an_error(image_dir: Path) -> None:
    """The retry is for files a newer commit collected; real damage is not hidden."""
    opts = IngestOptions(batch_size=8, workers=0)
    coll = Collection.index(image_dir, model=TINY, options=opts, device="cpu")
    (coll.path / "vectors" / f"{coll.manifest['shards'][0]}.ids.npy").unlink()
    # a one-line error naming the file (see vlmsearch.storage.integrity)
    with pytest.raises(MissingFileError, match=r"shard-\d+\.ids\.npy: missing"):
        _ = Collection(Layout(coll.path)).vectors
