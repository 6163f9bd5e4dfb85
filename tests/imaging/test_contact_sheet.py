"""`search --html` and `classify --html`: self-contained contact sheets."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from tests.conftest import TINY
from vlmsearch.cli.app import app

runner = CliRunner()


def test_search_and_classify_sheets(image_dir, tmp_path):
    res = runner.invoke(app, ["index", str(image_dir), "--model", TINY, "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    coll = str(image_dir / ".vlmsearch")
    out = tmp_path / "results.html"
    res = runner.invoke(app, ["search", "a <b>red</b> square", "-k", "4", "-c", coll,
                              "--html", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert len(re.findall(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)) == 4
    assert "<b>red</b>" not in page and "&lt;b&gt;red&lt;/b&gt;" in page  # escaped
    assert "<script" not in page and "http" not in page  # nothing fetched from anywhere
    out = tmp_path / "labels.html"
    res = runner.invoke(app, ["classify", "--labels", "red,blue,nothing", "--templates",
                              "simple", "-c", coll, "--html", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    page = out.read_text()
    sections = re.findall(r"<h2>(\w+) \((\d+)\)</h2>", page)
    assert [s[0] for s in sections] == ["red", "blue", "nothing"]
    assert sum(int(n) for _, n in sections) == 15
    assert page.count("data:image/jpeg;base64,") == 15
    # image files given on the command line, one of them broken
    (image_dir / "junk.png").write_bytes(b"junk")
    out = tmp_path / "files.html"
    res = runner.invoke(app, ["classify", str(image_dir / "img0000.png"),
                              str(image_dir / "junk.png"), "--labels", "a,b", "--model", TINY,
                              "--html", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert page.count("data:image/jpeg;base64,") == 1 and "errors (1)" in page
