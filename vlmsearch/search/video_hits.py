"""Search hits from video frames (``index --video``): the frames of one video collapse
to its best-ranked frame, so that a long video does not fill the results with itself,
and a frame's time is shown as ``m:ss.s``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from vlmsearch.results import Hit

VIDEO_COLUMN = "video_path"
TIME_COLUMN = "timestamp"
DRAW = 10  # first-stage hits drawn per result wanted when frames collapse


def has_video(column_names: Any) -> bool:
    """Whether a collection with these metadata columns holds video frames."""
    return VIDEO_COLUMN in column_names


def video_of(hit: Hit) -> str | None:
    """The video a hit is a frame of (its path relative to the root), or None."""
    value = hit.extra.get(VIDEO_COLUMN)
    return value if isinstance(value, str) and value else None


def best_frames(hits: list[Hit]) -> list[Hit]:
    """``hits`` (in rank order) with only the best-ranked frame of each video; other hits
    are kept as they are; ranks are renumbered."""
    seen: set[str] = set()
    kept = []
    for h in hits:
        video = video_of(h)
        if video is not None:
            if video in seen:
                continue
            seen.add(video)
        kept.append(h)
    if len(kept) == len(hits):
        return hits
    return [dataclasses.replace(h, rank=n) for n, h in enumerate(kept, start=1)]


def format_time(seconds: float) -> str:
    """``0:12.5``, ``1:02:03.0``: minutes (and hours) with tenths of a second."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    tenths = int(round(seconds * 10))
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    s = f"{rest // 10:02d}.{rest % 10}"
    return f"{h}:{m:02d}:{s}" if h else f"{m}:{s}"


def describe(hit: dict[str, Any]) -> str | None:
    """``clip.mp4 @ 0:12.5`` for a frame's hit (as :meth:`Hit.to_dict`), else None; the
    video's path is absolute like the hit's."""
    if not isinstance(hit.get(VIDEO_COLUMN), str) or hit.get(TIME_COLUMN) is None:
        return None
    video = str(hit["path"]).rpartition("/")[0] or hit[VIDEO_COLUMN]
    return f"{video} @ {format_time(float(hit[TIME_COLUMN]))}"
