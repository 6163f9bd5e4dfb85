"""Video files (``--video``): each sampled frame is an item, ``clip.mp4/t000012.500``.

Sampling decodes the whole video once, in order: a frame is kept every ``interval``
seconds (the first frame at or after 0, N, 2N, ... s) and at scene changes, never two
within :data:`MIN_GAP` seconds (the earlier one wins). A scene change is a frame whose
32x32 RGB thumbnail differs from the previous decoded frame's by more than
:data:`SCENE_THRESHOLD` in mean absolute value over pixels and channels (0-255 scale).
This is the idea of PySceneDetect's content detector (a cut is a jump in a per-frame
difference score; its default threshold 27 is on a similar 0-255 scale), on RGB rather
than HSV; cheap because the thumbnail comes out of the decoder's scaler. Luma alone is
not enough: a red and a blue scene can have almost the same brightness.

Decoding is the expensive part, so the sampled timestamps are cached per video, keyed
by (real path, size, mtime, interval) in a folder the collection names (its
``video-frames/``): re-indexing an unchanged video does not decode it. Reading a frame
seeks to the keyframe before its timestamp and decodes forward to it.

A frame's bytes are a JPEG at quality 95: it is 5-10x faster to encode than PNG and a
tenth of the size for a 1080p frame (the server sends it as the hit's thumbnail), and
at that quality the loss is far below what a 224-pixel encoder input can see. An item's
size and mtime are the video file's (a frame's own byte size is not known before it is
decoded), so an unchanged video is unchanged frame by frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from vlmsearch.errors import VlmsearchError, reason
from vlmsearch.imaging.scan import ScannedFile

SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
DEFAULT_INTERVAL = 2.0  # seconds between sampled frames
MIN_GAP = 0.5  # seconds: no two sampled frames closer than this
SCENE_THRESHOLD = 30.0  # mean absolute difference of 32x32 RGB thumbnails, 0-255
THUMB = 32
JPEG_QUALITY = 95
INSTALL = "pip install 'vlmsearch[video]'"
_EPS = 0.0005  # timestamps are kept to the millisecond

ProgressFn = Callable[[str, int, int], None]


class _Tally:
    """The "video" progress phase of an index run: frames decoded while sampling, out of
    the frame counts the containers declare (raised when a video has more)."""

    def __init__(self) -> None:
        self.reset(None)

    def reset(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.total = self.done = self.unsent = 0

    def start(self, estimate: int) -> None:
        self.total += estimate

    def frame(self, flush: bool = False) -> None:
        self.done += not flush
        self.unsent += not flush
        self.total = max(self.total, self.done)
        if self.progress is not None and self.unsent and (flush or self.unsent >= 64):
            self.progress("video", self.unsent, self.total)
            self.unsent = 0


_tally = _Tally()


def set_progress(progress: ProgressFn | None) -> None:
    """Report decoding as ``progress("video", frames, total)`` (None: stop reporting)."""
    _tally.reset(progress)


def member_name(t: float) -> str:
    """``t000012.500``: sorts in time order (up to 11 days) and parses back."""
    return f"t{t:010.3f}"


def member_time(member: str) -> float:
    """The timestamp a member names; ValueError when it names none."""
    if not member.startswith("t") or "/" in member:
        raise ValueError(member)
    return float(member[1:])


def require_av() -> None:
    """A one-line error when the video extra is not installed (checked before any model
    loads or any file is read)."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise VlmsearchError(f"--video needs PyAV, which is not installed: {INSTALL}") from None


def sample_times(
    path: str,
    interval: float = DEFAULT_INTERVAL,
    threshold: float = SCENE_THRESHOLD,
    min_gap: float = MIN_GAP,
) -> list[float]:
    """The timestamps (seconds) of the frames to index, in order (see the module doc)."""
    import av
    import numpy as np

    kept: list[float] = []
    next_tick, prev = 0.0, None
    with av.open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        _tally.start(int(stream.frames or 0))
        for n, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else n / float(stream.average_rate or 25)
            thumb = frame.reformat(width=THUMB, height=THUMB, format="rgb24").to_ndarray()
            thumb = thumb.astype(np.int16)
            scene = prev is not None and float(np.abs(thumb - prev).mean()) > threshold
            prev = thumb
            tick = t >= next_tick - _EPS
            if tick:
                next_tick = (int((t + _EPS) // interval) + 1) * interval
            if (tick or scene) and (not kept or t - kept[-1] >= min_gap - _EPS):
                kept.append(round(max(t, 0.0), 3))
            _tally.frame()
        _tally.frame(flush=True)
    return kept


def _cache_file(folder: str, real: str) -> str:
    return os.path.join(folder, hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest())


def cached_times(path: str, st: os.stat_result, interval: float, cache: str | None) -> list[float]:
    """:func:`sample_times`, from the cache when the video is unchanged since it was
    sampled with this interval (then nothing is decoded)."""
    real = os.path.realpath(path)
    ident = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "interval": interval}
    where = _cache_file(cache, real) + ".json" if cache else None
    if where is not None:
        try:
            with open(where, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("key") == ident:
                return [float(t) for t in saved["times"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or damaged: sample again
    times = sample_times(path, interval)
    if where is not None:
        try:
            os.makedirs(cache, exist_ok=True)
            tmp = f"{where}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"key": ident, "times": times}, f)
            os.replace(tmp, where)
        except OSError:
            pass  # a cache that cannot be written only costs a decode next time
    return times


class Video:
    suffixes = SUFFIXES
    sized_by_container = True  # an item's size is the video's (see the module doc)

    def items(
        self,
        path: str,
        rel: str,
        st: os.stat_result,
        opts: Any,
        explicit: bool,
        on_error: Callable[[str, str], None],
    ) -> Iterator[ScannedFile]:
        if not getattr(opts, "video", False):
            if explicit:
                on_error(rel, "a video file: index its frames with --video")
            return
        try:
            times = cached_times(
                path,
                st,
                float(getattr(opts, "video_interval", None) or DEFAULT_INTERVAL),
                getattr(opts, "video_cache", None),
            )
        except ImportError:
            on_error(rel, f"cannot read videos without PyAV: {INSTALL}")
            return
        except Exception as e:  # not a video, or damaged (av raises its own errors)
            on_error(rel, f"cannot decode video: {reason(e)}")
            return
        for t in times:
            extra = {"video_path": rel, "timestamp": t}
            yield ScannedFile(f"{rel}/{member_name(t)}", st.st_size, st.st_mtime_ns, extra)

    def read(self, path: str, member: str, max_bytes: int) -> bytes:
        try:
            t = member_time(member)
        except ValueError:
            raise OSError(f"no frame {member!r} in {os.path.basename(path)}") from None
        try:
            image = frame_at(path, t)
        except ImportError:
            raise OSError(f"cannot read videos without PyAV: {INSTALL}") from None
        except OSError:
            raise
        except Exception as e:
            raise OSError(f"cannot decode video: {reason(e)}") from None
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
        if buf.tell() > max_bytes:
            raise OSError(f"frame is over the {max_bytes}-byte limit")
        return buf.getvalue()

    def extras(self, path: str, member: str, sidecars: tuple[str, ...]) -> dict[str, Any]:
        return {}  # a frame's fields travel inline with its scanned item


def _video_stream(container: Any) -> Any:
    if not container.streams.video:
        raise ValueError("no video stream")
    return container.streams.video[0]


def frame_at(path: str, t: float) -> Any:
    """The RGB PIL image of the first frame at or after ``t`` seconds (the last frame
    when ``t`` is past the end): seek to the keyframe before ``t``, decode forward."""
    import av

    with av.open(path) as container:
        stream = _video_stream(container)
        if stream.time_base:
            container.seek(max(int(t / stream.time_base), 0), stream=stream, backward=True)
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.time is None or frame.time >= t - _EPS:
                break
        if last is None:
            raise OSError(f"no frame at {t:.3f} s")
        return last.to_image()
