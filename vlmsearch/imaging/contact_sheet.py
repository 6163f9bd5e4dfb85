"""Self-contained HTML contact sheets of search results and classifications.

Thumbnails are embedded as data: URIs, so the file can be mailed or opened anywhere with
no server; no script runs in it. Every text is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmsearch import names
from vlmsearch.imaging import sources
from vlmsearch.imaging.decode import ImageDecodeError
from vlmsearch.imaging.item_read import read_item
from vlmsearch.imaging.thumbnails import cached_thumbnail, cached_thumbnail_of, make_thumbnail
from vlmsearch.storage.atomic import atomic_write_text

THUMB = 256

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#fafafa;color:#1b1b1b}
h1{font-size:18px}h2{font-size:16px;margin-top:24px}.meta{color:#666}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
figure{margin:0;background:#fff;border-radius:6px;padding:6px}
.frame{position:relative}.frame img{display:block;width:100%;height:100%;object-fit:contain}
.box{position:absolute;border:2px solid #ffd000;box-shadow:0 0 0 1px #000a}
figcaption{font-size:12px;color:#555;overflow-wrap:anywhere}b{color:#1b1b1b}
.missing{height:120px;display:flex;align-items:center;justify-content:center;color:#b3261e}
"""

Thumbnailer = Callable[[int | None, Path], bytes | None]


def thumbnailer(collection: Path | None, size: int = THUMB) -> Thumbnailer:
    """Thumbnail bytes for (id, path): from the collection's cache when there is one.
    ``path`` may name a member of a dataset container or a video frame (``shard.tar/
    key.jpg``, ``clip.mp4/t000004.000``); None when it cannot be read or decoded."""

    def get(image_id: int | None, path: Path) -> bytes | None:
        try:
            if path.is_file():
                if collection is not None and image_id is not None:
                    return cached_thumbnail(collection, image_id, path, size)[0]
                return make_thumbnail(read_item(path), size, name=str(path))
            return _member_thumbnail(collection, image_id, path, size)
        except (OSError, ImageDecodeError):
            return None

    return get


@dataclass(frozen=True)
class _Identity:
    """A member's identity for the thumbnail cache, as the server keys it: its byte size
    and its container's mtime."""

    st_size: int
    st_mtime_ns: int


def _member_thumbnail(
    collection: Path | None, image_id: int | None, path: Path, size: int
) -> bytes:
    """The thumbnail of a container's member (OSError when ``path`` names none)."""
    data = read_item(path)
    found = sources.split_member(str(path))
    if collection is None or image_id is None or found is None:
        return make_thumbnail(data, size, name=str(path))
    identity: Any = _Identity(len(data), os.stat(found[0]).st_mtime_ns)
    return cached_thumbnail_of(collection, image_id, size, identity, lambda: data, str(path))[0]


def _figure(
    data: bytes | None,
    caption: str,
    width: int | None = None,
    height: int | None = None,
    box: Sequence[float] | None = None,
    href: str | None = None,
) -> str:
    ratio = f' style="aspect-ratio:{width}/{height}"' if width and height else ""
    if data is None:
        img = '<div class="missing">image unavailable</div>'
    else:
        b64 = base64.b64encode(data).decode()
        img = f'<img alt="" src="data:image/jpeg;base64,{b64}">'
    overlay = ""
    if box and width and height:
        x0, y0, x1, y1 = box
        overlay = (
            f'<div class="box" style="left:{100 * x0 / width:.2f}%;top:{100 * y0 / height:.2f}%;'
            f'width:{100 * (x1 - x0) / width:.2f}%;height:{100 * (y1 - y0) / height:.2f}%">'
            "</div>"
        )
    frame = f'<div class="frame"{ratio}>{img}{overlay}</div>'
    if href:
        frame = f'<a href="{html.escape(href, quote=True)}">{frame}</a>'
    return f"<figure>{frame}<figcaption>{caption}</figcaption></figure>"


def _page(title: str, meta: str, body: str) -> str:
    t = html.escape(title)
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
        f"<style>{_CSS}</style></head><body><h1>{t}</h1>"
        f'<p class="meta">{html.escape(meta)} &middot; {stamp}</p>{body}</body></html>\n'
    )


def search_sheet(hits: Sequence[Any], title: str, thumbs: Thumbnailer, meta: str = "") -> str:
    """A grid of hits (rank, score, path; the reranker's region when there is one)."""
    figs = []
    for h in hits:
        cap = f"<b>{h.rank}. {h.score:.4f}</b> {html.escape(h.relpath)}"
        if h.error:
            cap += f" ({html.escape(h.error)})"
        figs.append(_figure(thumbs(h.id, Path(h.path)), cap, h.width, h.height, h.box))
    body = f'<div class="grid">{"".join(figs)}</div>' if figs else "<p>no results</p>"
    return _page(title, meta or f"{len(hits)} results", body)


def classify_sheet(
    preds: Sequence[Any], labels: Sequence[str], title: str, thumbs: Thumbnailer, meta: str = ""
) -> str:
    """One section per label (in the order given), best score first; errors last."""
    groups: dict[str, list[Any]] = {label: [] for label in labels}
    errors = []
    for p in preds:
        if p.label is None:
            errors.append(p)
        else:
            groups.setdefault(p.label, []).append(p)
    sections = []
    for label, items in groups.items():
        items.sort(key=lambda p: -(p.score or 0.0))
        figs = "".join(
            _figure(thumbs(p.id, Path(p.path)), f"<b>{p.score:.3f}</b> {html.escape(p.path)}")
            for p in items
        )
        sections.append(
            f"<h2>{html.escape(label)} ({len(items)})</h2>"
            + (f'<div class="grid">{figs}</div>' if items else "<p>none</p>")
        )
    if errors:
        rows = "".join(
            f"<li>{html.escape(p.path)}: {html.escape(str(p.error))}</li>" for p in errors
        )
        sections.append(f"<h2>errors ({len(errors)})</h2><ul>{rows}</ul>")
    return _page(title, meta or f"{len(preds)} images", "".join(sections))


def duplicates_sheet(groups: Sequence[Any], title: str, thumbs: Thumbnailer, meta: str = "") -> str:
    """One section per near-duplicate group, keeper first: each image's thumbnail (as in
    :func:`search_sheet`), linked to its file when it is one (not a member of a container
    or a video frame); a video frame reads ``clip.mp4 @ 0:04.0``."""
    sections = []
    for n, g in enumerate(groups, start=1):
        sims = dict(zip(g.others, g.similarity, strict=True))
        figs = []
        for i in g.ids:
            path = g.paths.get(i, "")
            what = "<b>keep</b>" if i == g.keeper else f"<b>{sims[i]:.3f}</b>"
            cap = f"{what} {html.escape(names.readable(g.label(i)))}"
            real_file = path and Path(path).is_absolute() and Path(path).is_file()
            href = Path(path).as_uri() if real_file else None
            figs.append(_figure(thumbs(i, Path(path)) if path else None, cap, href=href))
        sections.append(f'<h2>group {n} ({len(g)})</h2><div class="grid">{"".join(figs)}</div>')
    body = "".join(sections) or "<p>no near-duplicates</p>"
    return _page(title, meta or f"{len(groups)} groups", body)


def misses_sheet(
    sections: dict[str, Sequence[Any]], title: str, thumbs: Thumbnailer, meta: str = ""
) -> str:
    """An evaluation's worst misses, one section each (``vlmsearch eval --html``): each
    image with the rank its right answer got, the query text and what came first."""
    parts = []
    for heading, misses in sections.items():
        figs = []
        for m in misses:
            cap = f"<b>rank {m.rank}</b> {html.escape(names.readable(m.text))}"
            if m.got:
                cap += f"<br>first: {html.escape(names.readable(m.got))}"
            figs.append(_figure(thumbs(m.id, Path(m.path)) if m.path else None, cap))
        grid = f'<div class="grid">{"".join(figs)}</div>' if figs else "<p>no misses</p>"
        parts.append(f"<h2>{html.escape(heading)} ({len(misses)})</h2>{grid}")
    return _page(title, meta, "".join(parts) or "<p>no misses</p>")


def write(path: str | Path, text: str) -> Path:
    p = Path(path).expanduser()
    atomic_write_text(p, names.readable(text))  # file names that are not UTF-8 as \xNN
    return p
