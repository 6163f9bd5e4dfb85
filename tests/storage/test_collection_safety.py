"""A collection directory is not trusted, and nothing outside what vlmsearch wrote is
destroyed: the writer lock, the refusal of foreign folders, garbage collection by the
manifest's record, and the ``next_id`` check (issue 14, items 2, 3 and 8)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY, make_images, metadata_file
from vlmsearch import Collection
from vlmsearch.errors import CollectionError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage import gc
from vlmsearch.storage.layout import Layout

USER_FILES = {  # the user's own files, named like a collection's
    "metadata-2024.parquet": b"my metadata",
    "index-1.faiss": b"my index",
    "student-3.pt": b"my model",
    ".draft.tmp": b"my draft",
    "vectors/shard-7.ids.npy": b"my shard",
    "metadata-999999.parquet": b"my generation-looking file",
}


def _index(root: Path, **kw) -> Collection:
    opts = IngestOptions(batch_size=8, workers=0, **kw.pop("options", {}))
    return Collection.index(root, model=TINY, options=opts, device="cpu", **kw)


def _plant(folder: Path) -> None:
    for name, data in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _assert_planted(folder: Path) -> None:
    for name, data in USER_FILES.items():
        assert (folder / name).read_bytes() == data, name


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["vlmsearch", *args], capture_output=True, text=True, timeout=300)


# -- item 2: the writer lock ------------------------------------------------------------------
def test_symlinked_lock_is_refused_and_its_target_untouched(image_dir: Path, tmp_path: Path):
    coll = _index(image_dir)
    victim = tmp_path / "secret.txt"
    victim.write_text("do not truncate me")
    (coll.path / ".lock").unlink()
    (coll.path / ".lock").symlink_to(victim)
    make_images(image_dir / "more", 1)
    res = _cli("index", str(image_dir), "--workers", "0", "--quiet")
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert "symbolic link" in res.stderr
    with pytest.raises(CollectionError, match="symbolic link"):
        coll.classify(["red", "blue"], write_column="colour")
    assert victim.read_text() == "do not truncate me"


def test_hard_linked_lock_is_never_written(image_dir: Path, tmp_path: Path):
    coll = _index(image_dir)
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes")
    (coll.path / ".lock").unlink()
    os.link(victim, coll.path / ".lock")
    make_images(image_dir / "more", 2)
    _index(image_dir).classify(["red", "blue"], write_column="colour")
    assert victim.read_text() == "my notes"  # locked through it, never truncated or written


def test_lock_holder_pid_comes_from_the_kernel(image_dir: Path):
    coll = _index(image_dir)
    if not os.path.exists("/proc/locks"):
        pytest.skip("no /proc/locks")
    with Layout(coll.path).lock(), pytest.raises(CollectionError) as err:
        _index(image_dir)
    assert f"another vlmsearch process (pid {os.getpid()})" in str(err.value)
    assert (coll.path / ".lock").stat().st_size == 0  # nothing written into it


def test_a_waiting_writer_gets_the_lock_when_it_is_released(tmp_path: Path):
    """``wait_s``: another process's lock is waited for; past the wait, one line naming it."""
    import sys
    import time

    from vlmsearch.storage.lock import WriterLock

    lock = tmp_path / "c" / ".lock"
    lock.parent.mkdir()
    code = (
        "import sys, time; from pathlib import Path; "
        "from vlmsearch.storage.lock import WriterLock; "
        "lock = WriterLock(Path(sys.argv[1])); lock.__enter__(); "
        "print('held', flush=True); time.sleep(float(sys.argv[2]))"
    )

    def hold(seconds: float) -> subprocess.Popen[str]:
        args = [sys.executable, "-c", code, str(lock), str(seconds)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    proc = hold(0.8)
    try:
        start = time.monotonic()
        with WriterLock(lock, wait_s=30):
            assert time.monotonic() - start >= 0.3  # it waited for the other writer
    finally:
        proc.wait(10)
    proc = hold(30)
    try:
        with pytest.raises(CollectionError, match=r"being written .*waited 0\.3 s") as err:
            WriterLock(lock, wait_s=0.3).__enter__()
        if os.path.exists("/proc/locks"):
            assert f"(pid {proc.pid})" in str(err.value)
        with pytest.raises(CollectionError, match="wait for it to finish"):
            WriterLock(lock).__enter__()  # no wait: at once, as before
    finally:
        proc.kill()
        proc.wait()


# -- item 3: foreign folders and garbage collection -------------------------------------------
def test_index_refuses_a_nonempty_folder_that_is_not_a_collection(image_dir: Path, tmp_path):
    folder = tmp_path / "my-files"
    _plant(folder)
    res = _cli("index", str(image_dir), "--collection", str(folder), "--model", TINY)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "not empty and is not a vlmsearch collection" in lines[0]
    _assert_planted(folder)
    assert not (folder / "manifest.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        {n.split("/")[0] for n in USER_FILES}
    )  # nothing added either (no .lock, no manifest)


def test_empty_folder_and_interrupted_first_run_are_accepted(image_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(_index(image_dir, collection=empty).table) == 15
    # what a first run leaves when killed before its first commit
    unfinished = tmp_path / "unfinished"
    (unfinished / "vectors").mkdir(parents=True)
    (unfinished / ".lock").touch()
    (unfinished / ".vlmsearch-manifest.json.abc123.tmp").write_text("{")
    assert len(_index(image_dir, collection=unfinished).table) == 15
    assert not (unfinished / ".vlmsearch-manifest.json.abc123.tmp").exists()


def test_gc_deletes_only_files_the_manifest_history_named(
    image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(gc, "RETAIN_SECONDS", 0.0)
    coll = _index(image_dir)
    first = coll.manifest
    old_files = {metadata_file(first), first["index"]["file"]} | {
        f"vectors/{s}.f16.npy" for s in first["shards"]
    }
    _plant(coll.path)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    # a hostile manifest naming a file outside the collection as retired
    m = json.loads((coll.path / "manifest.json").read_text())
    m["retired"] = [{"file": "../../outside.txt", "since": 0}, {"file": "/etc/hosts"}]
    (coll.path / "manifest.json").write_text(json.dumps(m))
    ours_tmp = coll.path / "vectors" / ".vlmsearch-shard-000099.ids.npy.x1y2.tmp"
    ours_tmp.write_bytes(b"left by a crashed writer")

    make_images(image_dir / "more", 2)
    coll = _index(image_dir, options={"rebuild": True})  # every old file is retired
    coll.classify(["red", "blue"], write_column="colour")
    coll.classify(["red", "green"], write_column="colour")

    _assert_planted(coll.path)
    assert outside.read_text() == "keep"
    assert not ours_tmp.exists()
    for name in old_files:  # our own old generation is gone, once retired long enough
        assert not (coll.path / name).exists(), name
    m = coll.manifest
    assert (coll.path / metadata_file(m)).is_file() and (coll.path / m["index"]["file"]).is_file()
    assert len(Collection.open(coll.path).search_vector(coll.vectors.vectors[0], k=3)) == 3


def test_retired_files_are_kept_for_readers_until_old_enough(image_dir: Path):
    coll = _index(image_dir)
    first = coll.manifest
    make_images(image_dir / "more", 2)
    coll = _index(image_dir, options={"rebuild": True})
    for _ in range(3):  # rapid commits: the first generation is still retained
        coll.classify(["red", "blue"], write_column="colour")
    retired = {e["file"] for e in coll.manifest["retired"]}
    assert metadata_file(first) in retired and first["index"]["file"] in retired
    assert (coll.path / metadata_file(first)).is_file()
    assert all((coll.path / f"vectors/{s}.ids.npy").is_file() for s in first["shards"])


# -- item 8: next_id --------------------------------------------------------------------------
def test_next_id_not_above_the_largest_id_is_repaired(image_dir: Path):
    coll = _index(image_dir)
    before = {r["path"]: r["id"] for r in coll.table.select(["path", "id"]).to_pylist()}
    mpath = coll.path / "manifest.json"
    m = json.loads(mpath.read_text())
    m["next_id"] = 3  # hand-edited below existing ids
    mpath.write_text(json.dumps(m))
    make_images(image_dir / "more", 2)
    coll = _index(image_dir)
    rows = {r["path"]: r["id"] for r in coll.table.select(["path", "id"]).to_pylist()}
    assert len(rows) == 17 and len(set(rows.values())) == 17
    assert all(rows[p] == i for p, i in before.items())  # no row evicted or renumbered
    assert min(rows[p] for p in rows if p.startswith("more/")) > max(before.values())
    assert coll.manifest["next_id"] == max(rows.values()) + 1
    assert any("next_id" in n for n in coll.last_report.notices)
    assert len(coll.vectors) == 17 and coll.faiss_index.ntotal == 17
