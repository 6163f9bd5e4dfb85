"""Region reranking picks its depth by what will run: the slow teacher on a CPU reranks 10
hits unless told otherwise and says, before it starts, about how long it will take; a
student keeps the usual 50 (issue 15: 157 s for the top 10 on 2 cores, no warning)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.cli.app import app
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.rerank.base import DEFAULT_TOP
from vlmsearch.rerank.region import teacher

runner = CliRunner()


@pytest.fixture
def coll(tmp_path: Path) -> Collection:
    root = tmp_path / "photos"
    make_images(root, 14)
    return Collection.index(root, model=TINY, options=IngestOptions(workers=0), device="cpu")


def reranked(hits) -> int:
    return sum(1 for h in hits if h.scores and "rerank" in h.scores)


def test_teacher_on_cpu_reranks_ten_by_default_and_says_so_first(
    coll: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    coll.on_notice = lambda note: events.append(f"note: {note}")
    score = teacher.RegionReranker.score

    def recording_score(self, query, candidates, progress=None):
        events.append(f"score {len(candidates)}")
        return score(self, query, candidates, progress)

    monkeypatch.setattr(teacher.RegionReranker, "score", recording_score)
    hits = coll.search("a red square", k=3, rerank="region:teacher")
    assert len(hits) == 3
    assert events[-1] == f"score {teacher.TEACHER_CPU_TOP}"
    assert len(events) == 2 and events[0].startswith(
        "note: region reranking with the teacher on CPU: about "
    )
    assert f"s for {teacher.TEACHER_CPU_TOP} candidates" in events[0]
    assert "vlmsearch distill" in events[0]
    # an explicit depth is kept
    all_hits = coll.search("a red square", k=14, rerank="region:teacher", rerank_top=12)
    assert reranked(all_hits) == 12


def test_estimate_scales_with_candidates_and_crops(coll: Collection) -> None:
    r = teacher.RegionReranker(mode="teacher", device="cpu")
    n_boxes = len(r.boxes_per_image())
    assert n_boxes == 46  # the whole image and the default windows, each cropped twice
    note = r.plan_note(coll, 10)
    assert note is not None
    secs_10 = float(note.split("about ")[1].split(" s")[0])
    per_crop = r._crop_seconds[1]  # measured on this machine
    assert secs_10 == pytest.approx(10 * 2 * n_boxes * per_crop, abs=0.51)


def test_a_student_keeps_the_usual_depth_and_no_note(coll: Collection) -> None:
    r = teacher.RegionReranker(mode="auto", device="cpu")
    assert r.default_top(coll) == teacher.TEACHER_CPU_TOP
    coll.manifest["region_student"] = {
        "file": "student.pt",
        "encoder": Encoder.identity(coll.manifest["encoder"]),
    }
    assert r.default_top(coll) == DEFAULT_TOP and r.plan_note(coll, 50) is None
    # a student trained for another encoder does not count
    coll.manifest["region_student"]["encoder"] = {"kind": "open_clip", "arch": "other"}
    assert r.default_top(coll) == teacher.TEACHER_CPU_TOP
    # on a GPU the teacher keeps the usual depth
    assert teacher.RegionReranker(mode="teacher", device="cuda").default_top(coll) == DEFAULT_TOP


def test_cli_prints_the_note_before_the_results(coll: Collection) -> None:
    res = runner.invoke(
        app, ["search", "a red square", "-k", "2", "--rerank", "region", "-c", str(coll.path)]
    )
    assert res.exit_code == 0, res.output
    assert "region reranking with the teacher on CPU: about" in res.stderr
    assert f"for {teacher.TEACHER_CPU_TOP} candidates" in res.stderr
