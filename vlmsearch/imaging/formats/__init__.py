"""Image formats beyond Pillow's own: a small registry of format plugins.

Each plugin (one module each: :mod:`.heif`, :mod:`.raw`) declares the file extensions it
reads, the extra that installs its library, how to recognise its bytes, and how to open
bytes into a PIL image. Files are routed by extension first (a camera RAW is often a TIFF
that Pillow would open as its tiny first IFD) and then by their leading bytes (a HEIC
saved as ``.jpg``); anything else goes to Pillow. The scan includes every plugin's
extensions whether or not its library is installed, so a missing extra shows up as error
rows naming it rather than as silently missing files.

Importing this package loads neither Pillow nor the plugins' libraries.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class FormatError(ValueError):
    """Bytes a plugin cannot open; the message is the error row's text."""


@dataclass
class Opened:
    """An image opened for decoding (pixels possibly not loaded yet)."""

    image: Any  # PIL image
    format: str
    exif: dict[str, Any] | None = None  # EXIF columns read by the plugin (None: from image)
    oriented: bool = False  # pixels already upright: no EXIF transpose
    size: tuple[int, int] | None = None  # the full upright size, when the pixels are smaller


@dataclass(frozen=True)
class FormatPlugin:
    name: str  # what error messages call the format ("HEIC/HEIF")
    extensions: tuple[str, ...]  # lower case, with the dot
    extra: str  # the vlmsearch extra that installs its library
    sniff: Callable[[bytes], bool]  # whether leading bytes are this format
    open: Callable[[bytes, int], Opened]  # (bytes, max_pixels) -> Opened; FormatError
    read_exif: Callable[[bytes], dict[str, Any]]  # EXIF columns without decoding pixels
    browser_native: bool = False  # browsers show it as it is (else the server sends JPEG)


def plugins() -> tuple[FormatPlugin, ...]:
    from vlmsearch.imaging.formats import heif, raw

    return (heif.HEIF, heif.AVIF, raw.RAW)


def plugin_for_name(name: str | os.PathLike[str] | None) -> FormatPlugin | None:
    if not name:
        return None
    lower = str(name).lower()
    return next((p for p in plugins() if lower.endswith(p.extensions)), None)


def plugin_for(data: bytes, name: str | os.PathLike[str] | None = None) -> FormatPlugin | None:
    """The plugin for a file named ``name`` with bytes ``data``; None: Pillow opens it."""
    found = plugin_for_name(name)
    if found is not None:
        return found
    head = bytes(data[:64])
    return next((p for p in plugins() if p.sniff(head)), None)


def open_image(data: bytes, name: str | None, max_pixels: int) -> Opened:
    """Open bytes with their plugin, or with Pillow. FormatError from a plugin; Pillow's
    own exceptions otherwise."""
    plugin = plugin_for(data, name)
    if plugin is not None:
        return plugin.open(data, max_pixels)
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return Opened(img, img.format or "unknown")


def needs_jpeg(name: str | None) -> bool:
    """Whether a browser cannot show a file so named as it is (the server converts it)."""
    plugin = plugin_for_name(name)
    return plugin is not None and not plugin.browser_native


def missing_extra(what: str, extra: str = "formats") -> FormatError:
    return FormatError(f"{what} files need the '{extra}' extra: pip install 'vlmsearch[{extra}]'")


def exif_of(data: bytes, name: str | None = None) -> dict[str, Any]:
    """The EXIF columns of bytes not otherwise opened (the nvJPEG path), by their plugin
    or by Pillow; {} when there are none."""
    from vlmsearch.imaging import exif

    plugin = plugin_for(data, name)
    if plugin is None:
        return exif.from_bytes(data)
    try:
        return plugin.read_exif(data)
    except Exception:  # tags never fail a row
        return {}


def file_exif(path: str) -> dict[str, Any]:
    """The EXIF columns of an indexed item (a file or container member): a format with a
    plugin is read whole, anything else by :func:`vlmsearch.imaging.exif.from_file`."""
    from vlmsearch.imaging import exif
    from vlmsearch.imaging.item_read import read_item

    if plugin_for_name(path) is None:
        try:
            head = exif.read_head(path)
        except OSError:
            head = b""
        if plugin_for(head) is None:
            return exif.from_file(path)
    try:
        return exif_of(read_item(path), path)
    except OSError:
        return {}
