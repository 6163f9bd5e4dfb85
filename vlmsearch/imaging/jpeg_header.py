"""What a JPEG's markers say without decoding it: size, colour components and EXIF
orientation, and whether nvJPEG can decode it at all. Read in the GPU pipeline's CPU
threads, so that a batch can be sized, bounded and oriented before it reaches the GPU."""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SOF_MARKERS = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)


@dataclass
class JpegHeader:
    width: int
    height: int
    components: int
    orientation: int  # EXIF orientation 1..8 (1: as stored)


def parse_jpeg_header(data: bytes | memoryview) -> JpegHeader | None:
    """Size, colour components and EXIF orientation of a JPEG nvJPEG can decode, read
    from its markers without decoding; None for anything else (not a JPEG, arithmetic or
    lossless coding, truncated header), which then takes the Pillow path."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, orientation = 2, 1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        seg = pos + 4
        if marker == 0xE1 and bytes(data[seg : seg + 6]) == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(data[seg + 6 : pos + 2 + length]))
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF_MARKERS or seg + 6 > n:
                return None
            height, width = struct.unpack(">HH", data[seg + 1 : seg + 5])
            comps = data[seg + 5]
            if width == 0 or height == 0 or comps not in (1, 3):
                return None
            return JpegHeader(width, height, comps, orientation)
        elif marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block, else 1."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, typ = struct.unpack(end + "HH", tiff[entry : entry + 4])
        if tag == 0x0112 and typ == 3:  # SHORT
            (value,) = struct.unpack(end + "H", tiff[entry + 8 : entry + 10])
            return value if 1 <= value <= 8 else 1
    return 1
