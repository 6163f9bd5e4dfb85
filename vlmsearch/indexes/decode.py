"""Image decoding in parallel DataLoader workers.

Each worker reads the file bytes once, hashes them, and decodes (EXIF orientation
applied, any mode to RGB, decompression-bomb guard) before running the encoder's
transform. A file that cannot be decoded yields an error record, never an exception.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pillow's own default warns above 89.5 Mpx; we refuse anything above this instead of
# decoding it, because a bomb can exhaust memory before the warning is seen.
DEFAULT_MAX_PIXELS = 178_956_970


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (or exceed the pixel limit)."""


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Any, str]:
    """Decode bytes to an RGB PIL image with EXIF orientation applied; returns (image, format)."""
    from PIL import Image, ImageOps

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"image is {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit "
                    "(decompression-bomb guard)"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                    rgba = img.convert("RGBA")
                    bg = Image.new("RGB", rgba.size, (255, 255, 255))
                    bg.paste(rgba, mask=rgba.getchannel("A"))
                    img = bg
                else:
                    img = img.convert("RGB")
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image (format not recognised)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageDecodeError(f"cannot decode image: {e}") from None
    return img, fmt


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Read and decode one image file for a query, with a clear error."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return decode_image(data, max_pixels)[0]
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


class ImageFileDataset:
    """Map-style dataset over decode tasks (torch DataLoader compatible)."""

    def __init__(
        self,
        tasks: Sequence[DecodeTask],
        transform: Callable[[Any], Any],
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.tasks = list(tasks)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Decoded:
        task = self.tasks[i]
        try:
            with open(task.path, "rb") as f:
                data = f.read()
        except OSError as e:
            return Decoded(task.index, None, error=f"cannot read file: {e.strerror or e}")
        digest = content_hash(data)
        if task.known_hash is not None and digest == task.known_hash:
            return Decoded(task.index, None, content_hash=digest, unchanged=True)
        try:
            img, fmt = decode_image(data, self.max_pixels)
            pixels = self.transform(img)
        except ImageDecodeError as e:
            return Decoded(task.index, None, content_hash=digest, error=str(e))
        except Exception as e:  # a transform failure must not abort a run
            return Decoded(task.index, None, content_hash=digest, error=f"preprocess failed: {e}")
        return Decoded(task.index, pixels, img.width, img.height, fmt, digest)


def _collate(items: list[Decoded]) -> list[Decoded]:
    return items


def iter_decoded(
    tasks: Sequence[DecodeTask],
    transform: Callable[[Any], Any],
    batch_size: int = 64,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[list[Decoded], Any]]:
    """Yield (records, stacked pixel tensor of the decodable records or None), in task order."""
    import torch
    from torch.utils.data import DataLoader

    ds = ImageFileDataset(tasks, transform, max_pixels)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    for records in loader:
        ok = [r.pixels for r in records if r.pixels is not None]
        stacked = torch.stack(ok) if ok else None
        if stacked is not None and torch.cuda.is_available():
            stacked = stacked.pin_memory()
        for r in records:
            r.pixels = None
        yield records, stacked
