"""A tiny valid DNG written by hand (no tifffile): a 16-bit RGGB mosaic with the DNG
tags libraw needs, and optionally a JPEG preview in a second IFD."""

from __future__ import annotations

import struct

import numpy as np

_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
_FORMATS = {_BYTE: "B", _SHORT: "H", _LONG: "I", _RATIONAL: "I", _SRATIONAL: "i"}


def _entry(tag: int, kind: int, values) -> tuple[int, int, int, bytes]:
    if kind == _ASCII:
        raw = values.encode() + b"\0"
        return tag, kind, len(raw), raw
    flat = [x for v in values for x in v] if kind in (_RATIONAL, _SRATIONAL) else list(values)
    return tag, kind, len(values), struct.pack(f"<{len(flat)}{_FORMATS[kind]}", *flat)


def _mosaic(width: int, height: int) -> bytes:
    """RGGB samples of a scene whose red rises to the right and green downwards."""
    yy, xx = np.mgrid[0:height, 0:width]
    red, green = xx * 4000 // width, yy * 4000 // height
    cfa = np.full((height, width), 1500, np.uint16)  # blue
    cfa[0::2, 0::2] = red[0::2, 0::2]
    cfa[0::2, 1::2] = green[0::2, 1::2]
    cfa[1::2, 0::2] = green[1::2, 0::2]
    return cfa.astype("<u2").tobytes()


def _raw_ifd(width: int, height: int, orientation: int, size: int) -> list:
    identity = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    return [
        _entry(254, _LONG, [0]),
        _entry(256, _LONG, [width]),
        _entry(257, _LONG, [height]),
        _entry(258, _SHORT, [16]),
        _entry(259, _SHORT, [1]),
        _entry(262, _SHORT, [32803]),  # colour filter array
        _entry(271, _ASCII, "Vlmsearch"),
        _entry(272, _ASCII, "Test DNG"),
        _entry(273, _LONG, [0]),  # strip offset, patched when laid out
        _entry(274, _SHORT, [orientation]),
        _entry(277, _SHORT, [1]),
        _entry(278, _LONG, [height]),
        _entry(279, _LONG, [size]),
        _entry(284, _SHORT, [1]),
        _entry(33421, _SHORT, [2, 2]),  # CFARepeatPatternDim
        _entry(33422, _BYTE, [0, 1, 1, 2]),  # CFAPattern: R G / G B
        _entry(50706, _BYTE, [1, 4, 0, 0]),  # DNGVersion
        _entry(50708, _ASCII, "Vlmsearch Test DNG"),
        _entry(50717, _LONG, [4095]),  # WhiteLevel
        _entry(50721, _SRATIONAL, identity),  # ColorMatrix1
        _entry(50728, _RATIONAL, [(1, 2), (1, 1), (1, 2)]),  # AsShotNeutral
        _entry(50778, _SHORT, [21]),  # CalibrationIlluminant1: D65
    ]


def _preview_ifd(width: int, height: int, size: int) -> list:
    return [
        _entry(254, _LONG, [1]),  # reduced-resolution image
        _entry(256, _LONG, [width]),
        _entry(257, _LONG, [height]),
        _entry(258, _SHORT, [8, 8, 8]),
        _entry(259, _SHORT, [7]),  # JPEG
        _entry(262, _SHORT, [6]),  # YCbCr
        _entry(273, _LONG, [0]),
        _entry(277, _SHORT, [3]),
        _entry(278, _LONG, [height]),
        _entry(279, _LONG, [size]),
        _entry(284, _SHORT, [1]),
    ]


def make_dng(
    width: int = 64, height: int = 48, orientation: int = 1, preview: bytes | None = None
) -> bytes:
    """The bytes of a DNG; ``preview`` (JPEG bytes) goes into a second IFD."""
    pixels = _mosaic(width, height)
    ifds = [(sorted(_raw_ifd(width, height, orientation, len(pixels))), pixels)]
    if preview is not None:
        import io

        from PIL import Image

        pw, ph = Image.open(io.BytesIO(preview)).size
        ifds.append((sorted(_preview_ifd(pw, ph, len(preview))), preview))
    out = bytearray(b"II*\0\0\0\0\0")
    link = 4  # where the offset of the next IFD goes
    for entries, strip in ifds:
        start = len(out) + (len(out) % 2)
        out += b"\0" * (start - len(out))
        struct.pack_into("<I", out, link, start)
        table = start + 2 + 12 * len(entries) + 4
        blobs = bytearray()
        cells = []
        for tag, kind, count, raw in entries:
            if len(raw) <= 4:
                cells.append((tag, kind, count, raw.ljust(4, b"\0")))
                continue
            blobs += b"\0" * (len(blobs) % 2)
            cells.append((tag, kind, count, struct.pack("<I", table + len(blobs))))
            blobs += raw
        blobs += b"\0" * (len(blobs) % 2)
        strip_at = struct.pack("<I", table + len(blobs))
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in cells:
            out += struct.pack("<HHI", tag, kind, count) + (strip_at if tag == 273 else value)
        link = len(out)
        out += b"\0\0\0\0" + blobs + strip
    return bytes(out)
