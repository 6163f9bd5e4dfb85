"""A full disk in any write phase is one line naming the file, and the last commit stays
readable (issue 14, item 12). The low-level writers are patched to fail as each library
does when the device is full; no real disk is filled."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.storage.nospace import NoSpaceError


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _numpy_short_write(*_a, **_k):
    raise OSError("8192 requested and 8128 written")


def _faiss_write_error(*_a, **_k):  # as faiss words it (seen writing to /dev/full)
    raise RuntimeError(
        "Error in void faiss::write_index(const Index*, IOWriter*, int) at "
        "/project/faiss/impl/index_write.cpp:499: Error: 'ret == (size * 4)' failed: "
        "write error in /x/.vlmsearch-index-000004.faiss.tmp: 4051 != 256000 (Success)"
    )


def _pyarrow_enospc(*_a, **_k):  # as pyarrow words it (seen writing to /dev/full)
    raise OSError(
        "[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"
    )


def _patch_manifest_write(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = Path.write_text

    def write_text(self: Path, *a, **k):
        if "manifest.json" in self.name:
            _enospc()
        return orig(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)


PHASES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "vector shard (ENOSPC)": (
        lambda mp: mp.setattr("vlmsearch.storage.vectors._save", _enospc),
        "vectors/shard-",
    ),
    "vector shard (numpy short write)": (
        lambda mp: mp.setattr("numpy.save", _numpy_short_write),
        "vectors/shard-",
    ),
    "metadata (pyarrow)": (
        lambda mp: mp.setattr("pyarrow.parquet.write_table", _pyarrow_enospc),
        "seg-",  # format 2: the checkpoint's metadata segment
    ),
    "faiss index": (lambda mp: mp.setattr("faiss.write_index", _faiss_write_error), "index-"),
    "manifest": (_patch_manifest_write, "manifest.json"),
}


def _index(root: Path) -> Collection:
    opts = IngestOptions(batch_size=8, workers=0)
    return Collection.index(root, model=TINY, options=opts, device="cpu")


@pytest.mark.parametrize("phase", list(PHASES))
def test_disk_full_in_each_phase_keeps_the_last_commit(
    image_dir: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    coll = _index(image_dir)
    before = coll.manifest["generation"]
    make_images(image_dir / "more", 3)
    patch, file_part = PHASES[phase]
    with monkeypatch.context() as mp:
        patch(mp)
        with pytest.raises(NoSpaceError) as err:
            _index(image_dir)
    msg = str(err.value)
    assert msg.startswith("no space left on device while writing ") and "\n" not in msg
    assert msg.endswith("; the last commit is intact")
    assert file_part in msg and ".tmp" not in msg  # the file meant, not its temp name
    intact = Collection.open(coll.path)
    assert intact.manifest["generation"] >= before and len(intact.table) in (15, 18)
    q = intact.vectors.vectors[0].astype(np.float32)
    assert len(intact.search_vector(q, k=3)) == 3
    assert not list(coll.path.rglob(".vlmsearch-*.tmp"))
    assert len(_index(image_dir).table) == 18  # and the next run completes


def test_disk_full_is_one_line_from_the_cli(image_dir: Path, monkeypatch: pytest.MonkeyPatch):
    assert CliRunner().invoke(app, ["index", str(image_dir), "--model", TINY, "--workers", "0",
                                    "--quiet"]).exit_code == 0  # fmt: skip
    make_images(image_dir / "more", 2)
    monkeypatch.setattr("vlmsearch.storage.vectors._save", _enospc)
    res = CliRunner().invoke(app, ["index", str(image_dir), "--workers", "0", "--quiet"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device while "), lines
    assert lines[0].endswith("the last commit is intact") and "Traceback" not in res.output


def test_classify_write_column_on_full_disk(image_dir: Path, monkeypatch: pytest.MonkeyPatch):
    coll = _index(image_dir)
    monkeypatch.setattr("pyarrow.parquet.write_table", _pyarrow_enospc)
    with pytest.raises(NoSpaceError, match=r"col-\d+\.parquet; the last commit is intact"):
        coll.classify(["red", "blue"], write_column="colour")
    monkeypatch.undo()
    assert "colour" not in Collection.open(coll.path).table.column_names
