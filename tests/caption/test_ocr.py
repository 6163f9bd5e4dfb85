"""OCR (`vlmsearch ocr`, `index --ocr`): text rendered with Pillow comes back, is stored
resumably, and is found by SQL, by its embedding and in the server's hits with its line.

RapidOCR takes about a second per image here, so the real engine reads one shared
three-image collection; resumability and errors use a fake engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.cli_helpers import ok, one_line_error, run
from tests.conftest import TINY
from vlmsearch import Collection
from vlmsearch.errors import QueryError
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.ocr import OcrLine
from vlmsearch.search.ocr_lines import best_line, like_patterns

WORDS = {"invoice.png": "INVOICE", "garden.png": "GARDEN"}


def text_image(path: Path, word: str | None, colour=(200, 40, 40)) -> None:
    im = Image.new("RGB", (420, 160), colour)
    if word:
        ImageDraw.Draw(im).text((30, 50), word, fill="white", font=ImageFont.load_default(size=40))
    im.save(path)


def make_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, word in WORDS.items():
        text_image(root / name, word)
    text_image(root / "plain.png", None, (30, 60, 200))
    return root


@pytest.fixture(scope="module")
def ocr_coll(tmp_path_factory):
    """A three-image collection (two words, one blank) read by the real engine, via CLI."""
    pytest.importorskip("rapidocr_onnxruntime")
    tmp = tmp_path_factory.mktemp("ocr")
    folder = make_folder(tmp / "photos")
    res = run("index", folder, "-c", tmp / "coll", "-m", TINY, "--workers", 0, "--ocr", "-q")
    ok(res)
    return tmp / "coll"


def test_words_come_back_and_blank_is_empty(ocr_coll):
    coll = Collection.open(ocr_coll)
    rows = {Path(r["path"]).name: r for r in coll.rows(coll.vectors.ids).values()}
    for name, word in WORDS.items():
        assert word in rows[name]["text"].upper()
        lines = json.loads(rows[name]["text_lines"])
        assert len(lines[0]["box"]) == 4 and 0.5 <= lines[0]["score"] <= 1
    assert rows["plain.png"]["text"] == ""  # read, no text: empty, not null nor an error
    assert json.loads(rows["plain.png"]["text_lines"]) == []
    assert coll.manifest["columns"]["text"]["kind"] == "ocr"


def test_found_by_ilike_with_line_and_box(ocr_coll):
    coll = Collection.open(ocr_coll)
    hits = coll.search("invoice", k=3, where="text ILIKE '%invoice%'")
    assert [Path(h.path).name for h in hits] == ["invoice.png"]
    line = hits[0].extra["ocr_line"]
    assert "INVOICE" in line["text"].upper() and line["column"] == "text"
    xs = [p[0] for p in line["box"]]
    assert 20 <= min(xs) < max(xs) <= 420  # where the word was drawn (x = 30)


def test_found_by_text_column(ocr_coll):
    coll = Collection.open(ocr_coll)
    stored = {Path(r["path"]).name: r["text"] for r in coll.rows(coll.vectors.ids).values()}
    # the tiny encoder is random: query with the stored text, whose embedding is its own
    hits = coll.search(stored["garden.png"], k=3, text_column="text")
    assert Path(hits[0].path).name == "garden.png"
    assert "GARDEN" in hits[0].extra["ocr_line"]["text"].upper()
    assert "plain.png" not in [Path(h.path).name for h in hits]  # "" is not embedded


def test_cli_search_shows_line_and_json(ocr_coll):
    res = run("search", "invoice", "-c", ocr_coll, "--where", "text ILIKE '%invoice%'", "--json")
    ok(res)
    hit = json.loads(res.stdout)[0]
    assert hit["ocr_line"]["box"] and "INVOICE" in hit["ocr_line"]["text"].upper()
    res = run("search", "invoice", "-c", ocr_coll, "--where", "text ILIKE '%invoice%'")
    ok(res)
    assert "text in image" in res.stdout


def test_server_search_carries_line(ocr_coll):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    app = create_app(ServerConfig(collections={"p": ocr_coll}))
    client = TestClient(app, base_url="http://127.0.0.1")
    body = {"text": "garden", "k": 2, "where": "text ILIKE '%garden%'"}
    res = client.post("/api/collections/p/search", json=body)
    assert res.status_code == 200, res.text
    hit = res.json()["hits"][0]
    assert "GARDEN" in hit["ocr_line"]["text"].upper() and len(hit["ocr_line"]["box"]) == 4


def test_rerun_resumes_and_json(ocr_coll):
    res = run("ocr", "-c", ocr_coll, "--json")
    ok(res)
    assert json.loads(res.stdout) == []  # every row read already
    assert "nothing to read" in res.stderr


class FakeEngine:
    """Reads the file name as the text; fails (like Ctrl-C) at the ``stop_at``-th image."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = 0, stop_at

    def describe(self):
        return {"engine": "fake"}

    def read(self, image):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return [OcrLine(f"word{image.size[0]}", [[1, 2], [30, 2], [30, 9], [1, 9]], 0.9)]


def test_interrupted_run_keeps_its_rows_and_resumes(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40 + i, 30), (i * 50, 20, 20)).save(folder / f"i{i}.png")
    coll = Collection.index(folder, model=TINY, options=IngestOptions(workers=0))
    with pytest.raises(KeyboardInterrupt):
        coll.ocr(FakeEngine(stop_at=3), commit_every=1)
    coll = Collection.open(coll.path)
    left = coll.caption_targets(None, "text", kind="ocr")
    assert len(left) == 2  # two were committed before the interruption
    engine = FakeEngine()
    done = coll.ocr(engine, ids=left)
    assert engine.calls == 2 and len(done) == 2
    texts = [r["text"] for r in coll.rows(coll.vectors.ids).values()]
    assert sorted(texts) == ["word40", "word41", "word42", "word43"]


def test_changed_image_loses_its_old_text_and_is_read_again(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40 + i, 30), (i * 90, 20, 20)).save(folder / f"i{i}.png")
    opts = IngestOptions(workers=0)
    coll = Collection.index(folder, model=TINY, options=opts)
    coll.ocr(FakeEngine())
    Image.new("RGB", (77, 30), (5, 200, 5)).save(folder / "i1.png")  # new content
    coll = Collection.index(folder, coll.path, model=TINY, options=opts)
    texts = {Path(r["path"]).name: r["text"] for r in coll.rows(coll.vectors.ids).values()}
    assert texts == {"i0.png": "word40", "i1.png": None}  # no stale text from the old image
    engine = FakeEngine()
    coll.ocr(engine)
    assert engine.calls == 1  # only the changed image is read again
    texts = {Path(r["path"]).name: r["text"] for r in coll.rows(coll.vectors.ids).values()}
    assert texts == {"i0.png": "word40", "i1.png": "word77"}


def _small(tmp_path: Path, n: int = 2) -> Collection:
    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (40 + i, 30), (i * 20, 20, 20)).save(folder / f"i{i}.png")
    return Collection.index(folder, tmp_path / "c", model=TINY, options=IngestOptions(workers=0))


def test_undecodable_image_stores_empty_text(tmp_path):
    coll = _small(tmp_path)
    (coll.root / "i1.png").write_bytes(b"not an image any more")
    done = {Path(r.path).name: r for r in coll.ocr(FakeEngine())}
    assert done["i1.png"].text == "" and done["i1.png"].error.startswith("not an image")
    assert done["i0.png"].text == "word40" and done["i0.png"].error is None
    # stored as "" with the image without text: not read again and again
    assert len(Collection.open(coll.path).caption_targets(None, "text", kind="ocr")) == 0


def test_missing_file_is_left_null_and_read_next_run(tmp_path):
    coll = _small(tmp_path, 3)
    moved = tmp_path / "away.png"
    (coll.root / "i1.png").rename(moved)  # a drive not mounted, say
    done = {Path(r.path).name: r for r in coll.ocr(FakeEngine())}
    assert done["i1.png"].text is None and "cannot read" in done["i1.png"].error
    assert done["i1.png"].to_dict()["error"] == done["i1.png"].error
    texts = {Path(r["path"]).name: r["text"] for r in coll.rows(coll.vectors.ids).values()}
    assert texts == {"i0.png": "word40", "i1.png": None, "i2.png": "word42"}
    moved.rename(coll.root / "i1.png")  # back again: only it is read
    engine = FakeEngine()
    assert [Path(r.path).name for r in Collection.open(coll.path).ocr(engine)] == ["i1.png"]
    assert engine.calls == 1
    # the CLI names it and says it is left for the next run (the real engine: 2 images)
    pytest.importorskip("rapidocr_onnxruntime")
    (coll.root / "i2.png").rename(moved)
    res = run("ocr", "-c", coll.path, "--overwrite")
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert "i2.png" in said and "1 file could not be read" in said


class _HeldLock:
    """Another writer: holds the collection's writer lock on a thread from ``start()``
    until ``release`` is set (flock: another open file in this process is another holder)."""

    def __init__(self, coll: Collection, hold_s: float | None) -> None:
        import threading

        self.layout, self.hold_s = coll.layout, hold_s
        self.held, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        with self.layout.lock():
            self.held.set()
            self.release.wait(self.hold_s)

    def start(self) -> None:
        self.thread.start()
        assert self.held.wait(5)

    def stop(self) -> None:
        self.release.set()
        self.thread.join(5)


class LockingEngine(FakeEngine):
    """Another writer takes the lock while the ``at``-th image is read."""

    def __init__(self, lock: _HeldLock, at: int) -> None:
        super().__init__()
        self.lock, self.at = lock, at

    def read(self, image):
        if self.calls + 1 == self.at:
            self.lock.start()
        return super().read(image)


def test_commits_wait_for_another_writer(tmp_path):
    coll = _small(tmp_path, 3)
    lock = _HeldLock(coll, hold_s=1.0)  # an `index` run commits meanwhile
    try:
        done = coll.ocr(LockingEngine(lock, at=1), commit_every=2)
    finally:
        lock.stop()
    assert len(done) == 3
    texts = sorted(r["text"] for r in coll.rows(coll.vectors.ids).values())
    assert texts == ["word40", "word41", "word42"]  # nothing lost


def test_a_writer_past_the_wait_fails_saying_what_is_kept(tmp_path):
    from vlmsearch.errors import CollectionError

    coll = _small(tmp_path, 3)
    lock = _HeldLock(coll, hold_s=None)  # held until the end of the test
    try:
        with pytest.raises(CollectionError) as err:
            coll.ocr(LockingEngine(lock, at=3), commit_every=2, commit_wait_s=0.3)
    finally:
        lock.stop()
    msg = str(err.value)
    assert "being written by another" in msg and "waited 0.3 s" in msg
    assert "the 2 rows stored before" in msg and "the 1 row of this batch" in msg
    assert len(coll.caption_targets(None, "text", kind="ocr")) == 1  # read next run


def test_caption_commits_wait_for_another_writer(tmp_path):
    """Captions share the write path: a held lock is waited for, then they are stored."""
    coll = _small(tmp_path, 2)
    lock = _HeldLock(coll, hold_s=0.6)

    class Captioner:
        def describe(self):
            return {"lm": "fake"}

        def caption_vector(self, vector):
            if not lock.thread.is_alive() and not lock.held.is_set():
                lock.start()
            return type("Cap", (), {"text": "a caption"})()

    try:
        done = coll.caption(Captioner(), write_column="cap", commit_every=1)
    finally:
        lock.stop()
    assert len(done) == 2
    assert [r["cap"] for r in coll.rows(coll.vectors.ids).values()] == ["a caption"] * 2


def test_cli_errors_are_one_line(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("RGB", (40, 30)).save(folder / "a.png")
    Collection.index(folder, tmp_path / "c", model=TINY, options=IngestOptions(workers=0))
    one_line_error(run("ocr", "-c", tmp_path / "c", "--write-column", "id"), "built in")
    one_line_error(run("ocr", "-c", tmp_path / "c", "--write-column", "a b"), "identifier")
    one_line_error(run("ocr", "-c", tmp_path / "c", "--where", "nosuchcol = 1"))
    one_line_error(run("ocr", "-c", tmp_path / "nowhere"))
    one_line_error(run("index", folder, "--ocr", "--watch"), "--watch")
    one_line_error(run("ocr", "-c", tmp_path / "c", "--max-side", 5), "at least 32")
    # "" is a bad name, not "store nothing" (that is --dry-run)
    one_line_error(run("ocr", "-c", tmp_path / "c", "--write-column", ""), "identifier")
    # the companions' suffixes: foo_lines would make foo_lines_lines and block foo
    for name in ("foo_lines", "text_lines", "foo_settings"):
        one_line_error(run("ocr", "-c", tmp_path / "c", "--write-column", name), "reserved")
    coll = Collection.open(tmp_path / "c")
    assert "foo_lines" not in coll.reader.column_names
    # captions: the same names are refused (their _settings companion, and OCR's _lines)
    with pytest.raises(QueryError, match="reserved for the companion columns"):
        coll.caption_targets(write_column="cap_settings")
    with pytest.raises(QueryError, match="identifier"):
        coll.caption_targets(write_column="")
    # a column that holds something else is not overwritten
    coll._write_text_column("cap", {0: "a caption"}, {"method": "magic"})
    one_line_error(run("ocr", "-c", tmp_path / "c", "--write-column", "cap"), "caption")


def test_index_ocr_over_a_dataset_text_column_names_the_way_out(tmp_path):
    """A Parquet dataset whose captions are called ``text``: `index --ocr` indexes, then
    points at `vlmsearch ocr --write-column ocr_text` (index has no --write-column)."""
    pytest.importorskip("rapidocr_onnxruntime")
    from tests.ingest import datasets as D

    D.parquet_dataset(tmp_path / "data" / "part-0.parquet", 0, 2, tmp_path, "struct")
    args = ["-c", tmp_path / "c", "-m", TINY, "--workers", 0, "--ocr", "-q"]
    line = one_line_error(run("index", tmp_path / "data", *args), "--write-column ocr_text")
    assert "vlmsearch ocr" in line and "choose another" not in line
    assert len(Collection.open(tmp_path / "c")) == 2  # the index run committed


def test_ocr_help():
    res = run("ocr", "--help")
    ok(res)
    assert "--write-column" in res.stdout and "--where" in res.stdout


def test_like_patterns_and_best_line():
    where = "width > 3 AND text ILIKE '%inv%oice%' OR \"my col\" NOT LIKE 'x_y' AND a = 'b'"
    assert like_patterns(where) == {"text": ["inv", "oice"], "my col": ["x", "y"]}
    lines = [
        {"text": "TOTAL 12.00", "box": [], "score": 0.99},
        {"text": "INV0ICE No 7", "box": [], "score": 0.8},  # OCR read O as 0
    ]
    assert best_line(lines, ["invoice"])["text"] == "INV0ICE No 7"
    assert best_line(lines, ["total"])["text"] == "TOTAL 12.00"
    assert best_line(lines, ["zebra"]) is None


def test_page_draws_the_line(ocr_coll):
    """The web page outlines the matching line over the thumbnail (headless Chromium)."""
    from tests.serve_helpers import live_server
    from tests.server.test_browser import CHROMIUM

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"browser test skipped: no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    app = create_app(ServerConfig(collections={"p": ocr_coll}))
    with live_server(app) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']")
            page.evaluate("document.querySelector('#where').value = \"text ILIKE '%garden%'\"")
            page.fill("#q", "garden")
            page.keyboard.press("Enter")
            page.wait_for_selector("#results .card svg.ocr-box polygon", state="attached")
            points = page.get_attribute("#results .card svg.ocr-box polygon", "points")
            assert len(points.split()) == 4
            assert "GARDEN" in page.inner_text("#results .card figcaption").upper()
        finally:
            browser.close()


def test_missing_extra_is_named(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "rapidocr_onnxruntime" else real(name, *a),
    )
    one_line_error(run("ocr", "-c", tmp_path / "c"), "pip install 'vlmsearch[ocr]'")
    one_line_error(run("index", tmp_path, "--ocr"), "vlmsearch[ocr]")
