"""End to end in headless Chromium: the web page searches, shows images, goes to
"more like this". Needs Debian's chromium (/usr/bin/chromium) and the playwright package;
skips with a message when either is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serve_helpers import build_collection, live_server

CHROMIUM = os.environ.get("VLMSEARCH_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"browser test skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser test skipped: pip install playwright"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_search_page_end_to_end(browser, tmp_path, tiny_encoder):
    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    path = build_collection(tmp_path / "photos", tiny_encoder, n=12)
    app = create_app(ServerConfig(collections={"photos": path}))
    with live_server(app) as base:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#q", "a red square")
        page.keyboard.press("Enter")
        page.wait_for_selector("#results .card img")
        cards = page.locator("#results .card")
        assert cards.count() == 12
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#results .card img'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        first = cards.nth(0).get_attribute("data-id")
        # keyboard: the second card, then Enter for "more like this"
        cards.nth(0).focus()
        page.keyboard.press("ArrowRight")
        second = page.evaluate("document.activeElement.dataset.id")
        assert second != first
        page.keyboard.press("Enter")
        page.wait_for_selector("#context:not([hidden])")
        assert "More like" in page.inner_text("#context")
        assert page.locator("#results .card").count() == 11  # every image but the query
        ids = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")
        assert second not in ids
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#results .card img'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        # click through once more, then back with Escape
        page.locator("#results .card").nth(0).click()
        page.wait_for_function("document.querySelector('#status').textContent.includes('more')")
        page.keyboard.press("Escape")
        # back on the first "more like" page: its heading names that image again
        page.wait_for_function("document.querySelectorAll('#results .card').length === 11")
        shown = page.inner_text("#status").split("like ")[-1]
        assert page.inner_text("#context-text").endswith(shown)
        shot = tmp_path / "vlmsearch-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        assert errors == []


def test_page_folds_away_hits_scoring_near_zero(browser, tmp_path, tiny_encoder):
    """ASIF-like scores (one match at 1.0, the rest 0.000) show one card and a button; the
    button shows the rest; a min score typed by the user replaces the automatic cut."""
    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    path = build_collection(tmp_path / "photos", tiny_encoder, n=4)
    app = create_app(ServerConfig(collections={"photos": path}))
    with live_server(app) as base:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        hits = [
            {"id": i, "score": s, "relpath": f"img{i}.png", "thumb_url": f"/x/{i}"}
            for i, s in enumerate([1.0, 0.0004, 0.0001, 0.0])
        ]
        page.evaluate("hits => render({hits}, '')", hits)
        assert page.locator("#results .card").count() == 1
        assert page.is_visible("#more-hits")
        assert page.inner_text("#more-hits").startswith("show 3 more")
        assert "3 low-scoring hidden" in page.inner_text("#status")
        page.click("#more-hits")
        assert page.locator("#results .card").count() == 4
        assert not page.is_visible("#more-hits")
        # CLIP-like scores are close together: nothing is folded
        clip = [dict(h, score=s) for h, s in zip(hits, [0.31, 0.27, 0.22, 0.2], strict=True)]
        page.evaluate("hits => render({hits}, '')", clip)
        assert page.locator("#results .card").count() == 4
        # the user's own cut wins
        page.click("#more summary")
        page.fill("#minscore", "0.25")
        page.evaluate("hits => render({hits}, '')", clip)
        assert page.locator("#results .card").count() == 2
        assert errors == []


def test_min_score_slider_and_sort_travel_with_the_search(browser, tmp_path, tiny_encoder):
    from vlmsearch.server.app import create_app
    from vlmsearch.server.config import ServerConfig

    path = build_collection(tmp_path / "photos", tiny_encoder, n=6)
    app = create_app(ServerConfig(collections={"photos": path}))
    with live_server(app) as base:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#more summary")
        page.fill("#minscore-slider", "-0.5")  # the slider sets the number box
        assert page.input_value("#minscore") == "-0.5"
        page.select_option("#sort", "-taken_at")
        page.fill("#q", "a red square")
        with page.expect_request(lambda r: r.url.endswith("/search")) as req:
            page.keyboard.press("Enter")
        body = req.value.post_data_json
        assert body["min_score"] == -0.5 and body["sort"] == "-taken_at"
        page.wait_for_selector("#results .card img")
        assert page.locator("#results .card").count() == 6  # PNGs: no EXIF, nulls kept
        assert page.is_hidden("#error") and errors == []
