"""Image decoding in parallel DataLoader workers.

Each worker reads the file bytes once, hashes them, and decodes (EXIF orientation
applied, any mode to RGB, decompression-bomb guard) before running the encoder's
transform. A file that cannot be decoded yields an error record, never an exception.

Workers stack their batch into one shared-memory tensor (one transfer per batch, not one
per image) and run at a lower CPU priority: on a small machine the encoder's own threads
need every core, and a decoder that preempts one of them mid-matmul stalls the whole
parallel region (measured in benchmarks/bench_embed.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmsearch.imaging.item_read import read_item

# Images over this many pixels are refused before their pixels are decoded (the manifest's
# documented ``max_pixels``); see :func:`allow_pixels` for how Pillow's own limit relates.
DEFAULT_MAX_PIXELS = 178_956_970

WORKER_NICE = 10
"""Niceness added in decoding workers. The decoders need about a tenth of the CPU the
ViT encoders need; at +10 the scheduler gives them roughly that share (weight 110 vs 1024)
and lets a waking encoder thread preempt them, while they still progress when other
programs load the machine (SCHED_IDLE would starve them there). 0 disables."""


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (or exceed the pixel limit)."""


_pillow_limit_lock = threading.Lock()
_warning_quieted = False


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open images up to ``max_pixels``; the caller enforces its own limit.

    Pillow checks every image at ``Image.open`` against its process-wide
    ``MAX_IMAGE_PIXELS`` (89.5 Mpx by default): a warning above it, an error above twice
    it. Escalating that warning refused photos between 89.5 and 179 Mpx although the
    documented limit is ``max_pixels``. The global is only ever raised, never lowered (under
    a lock), so a thread using a larger limit is never cut short by one using a smaller
    one; each call still refuses anything over its own limit before decoding. Worker
    processes import this module and raise their own copy the same way.
    """
    global _warning_quieted
    from PIL import Image

    with _pillow_limit_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
        if not _warning_quieted:
            # Pillow now warns only about images over a limit that the caller refuses
            # with its own message; the warning would be a duplicate on stderr. Installed
            # once, since ``warnings.catch_warnings`` per call is not thread-safe.
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            _warning_quieted = True


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> tuple[Any, str]:
    """Decode bytes to an RGB PIL image with EXIF orientation applied; returns (image, format).

    ``name`` (the file's name or path) routes formats Pillow does not read, such as camera
    RAW, to their plugin (:mod:`vlmsearch.imaging.formats`)."""
    img, fmt, _ = decode_image_sized(data, max_pixels, name=name)
    return img, fmt


def decode_image_sized(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
    name: str | None = None,
) -> tuple[Any, str, tuple[int, int]]:
    """:func:`decode_image_meta` without the EXIF columns."""
    img, fmt, size, _ = decode_image_meta(data, max_pixels, draft, name)
    return img, fmt, size


def decode_image_meta(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
    name: str | None = None,
) -> tuple[Any, str, tuple[int, int], dict[str, Any]]:
    """:func:`decode_image`, optionally with JPEG draft mode; returns (image, format, size).

    ``draft=(w, h)`` lets libjpeg scale a JPEG down by 1/2, 1/4 or 1/8 in the DCT domain
    while decoding, keeping both sides at least ``w`` and ``h`` (Pillow's
    ``Image.draft``). That is faster but changes the pixels (and so the embeddings)
    slightly, so it is opt-in. ``size`` is always the full image size (after EXIF
    orientation), whatever draft mode did. The last item is the EXIF columns
    (:mod:`vlmsearch.imaging.exif`), read from the image already open, before decoding.
    ``name``: see :func:`decode_image`; a format whose extra is not installed is an
    ImageDecodeError naming the extra.
    """
    from PIL import Image, ImageOps

    from vlmsearch.imaging import exif, formats
    from vlmsearch.imaging.pixel_modes import to_rgb

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    allow_pixels(max_pixels)
    try:
        opened = formats.open_image(data, name, max_pixels)
        img, fmt = opened.image, opened.format
        w, h = opened.size or img.size
        if w * h > max_pixels:
            raise ImageDecodeError(
                f"image is {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit "
                "(decompression-bomb guard)"
            )
        # never raises: corrupt EXIF is no EXIF
        meta = exif.from_image(img) if opened.exif is None else opened.exif
        if draft is not None and fmt == "JPEG":
            img.draft("RGB", draft)
        img.load()
        loaded = img.size
        if not opened.oriented:
            img = ImageOps.exif_transpose(img)
        if img.size != loaded:  # rotated by 90 or 270 degrees
            w, h = h, w
        img = to_rgb(img)
    except ImageDecodeError:
        raise
    except formats.FormatError as e:
        raise ImageDecodeError(str(e)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image (format not recognised)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageDecodeError(f"cannot decode image: {e}") from None
    return img, fmt, (w, h), meta


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Read and decode one image file for a query, with a clear error."""
    try:
        data = read_item(path)
    except OSError as e:
        raise ImageDecodeError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return decode_image(data, max_pixels, name=str(path))[0]
    except ImageDecodeError as e:
        raise ImageDecodeError(f"{path}: {e}") from None


@dataclass
class DecodeTask:
    index: int  # position in the caller's task list
    path: str  # absolute path
    known_hash: str | None = None  # when set and equal, the file is reported unchanged


@dataclass
class Decoded:
    index: int
    pixels: Any  # torch.Tensor or None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    content_hash: str | None = None
    error: str | None = None
    unchanged: bool = False
    read_failed: bool = False  # the file could not be read (not: its bytes do not decode)
    exif: dict[str, Any] | None = None  # EXIF columns (vlmsearch.imaging.exif), if any


class ImageFileDataset:
    """Map-style dataset over decode tasks (torch DataLoader compatible)."""

    def __init__(
        self,
        tasks: Sequence[DecodeTask],
        transform: Callable[[Any], Any],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: tuple[int, int] | None = None,
    ) -> None:
        from vlmsearch.imaging.bounded_resize import bounded

        self.tasks = list(tasks)
        self.transform = bounded(transform)  # extreme aspect ratios: bounded memory
        self.max_pixels = max_pixels
        self.draft = draft

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Decoded:
        return decode_task(self.tasks[i], self.transform, self.max_pixels, self.draft)


def decode_task(
    task: DecodeTask,
    transform: Callable[[Any], Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Decoded:
    """Read, hash, decode and transform one file; any failure is an error record. Shared by
    the DataLoader workers and :mod:`vlmsearch.imaging.pool_decode`'s (torch-free) ones."""
    try:
        data = read_item(task.path)
    except OSError as e:
        msg = f"cannot read file: {e.strerror or e}"
        return Decoded(task.index, None, error=msg, read_failed=True)
    digest = content_hash(data)
    if task.known_hash is not None and digest == task.known_hash:
        return Decoded(task.index, None, content_hash=digest, unchanged=True)
    try:
        img, fmt, (width, height), meta = decode_image_meta(data, max_pixels, draft, task.path)
        pixels = transform(img)
    except ImageDecodeError as e:
        return Decoded(task.index, None, content_hash=digest, error=str(e))
    except Exception as e:  # a transform failure must not abort a run
        return Decoded(task.index, None, content_hash=digest, error=f"preprocess failed: {e}")
    return Decoded(task.index, pixels, width, height, fmt, digest, exif=meta or None)


def _collate(items: list[Decoded]) -> tuple[list[Decoded], Any]:
    """(records without pixels, the decodable records' pixels stacked, or None).

    Runs in the worker, where torch's default collation stacks straight into shared
    memory, so a batch crosses to the main process as one tensor.
    """
    from torch.utils.data import default_collate

    ok = [r.pixels for r in items if r.pixels is not None]
    for r in items:
        r.pixels = None
    return items, default_collate(ok) if ok else None


def _lower_priority(_worker_id: int) -> None:
    if WORKER_NICE:
        with contextlib.suppress(OSError, AttributeError):
            os.nice(WORKER_NICE)


def iter_decoded(
    tasks: Sequence[DecodeTask],
    transform: Callable[[Any], Any],
    batch_size: int = 64,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> Iterator[tuple[list[Decoded], Any]]:
    """Yield (records, stacked pixel tensor of the decodable records or None), in task order.

    ``draft``: see :func:`decode_image_sized` (opt-in, changes the pixels slightly).
    """
    import torch
    from torch.utils.data import DataLoader

    ds = ImageFileDataset(tasks, transform, max_pixels, draft)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_lower_priority if workers > 0 else None,
    )
    yield from loader
