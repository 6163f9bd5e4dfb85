"""When and where a photo was taken, and with what: a few EXIF tags as metadata columns.

Read from an image Pillow already opened for decoding (no second read of the file), or,
for a collection indexed before these columns existed, from the file's header alone
(Pillow opens lazily: the pixels are never read). EXIF is written by many cameras and
tools, often badly, so any tag that does not parse is null; nothing here raises.

``taken_at`` is the camera's local clock time (EXIF ``DateTimeOriginal``, with
``SubSecTimeOriginal``), stored as a timestamp without a zone, because most files do not
say which zone that clock was in. ``taken_at_offset`` is ``OffsetTimeOriginal``
(``"+02:00"``) when the file has it, so the UTC time is ``taken_at - offset``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import stat
import warnings
from typing import Any

import pyarrow as pa

EXIF_SCHEMA = pa.schema(
    [
        ("taken_at", pa.timestamp("us")),
        ("taken_at_offset", pa.string()),
        ("camera_make", pa.string()),
        ("camera_model", pa.string()),
        ("lens", pa.string()),
        ("gps_lat", pa.float64()),
        ("gps_lon", pa.float64()),
        ("orientation", pa.int16()),
    ]
)
EXIF_COLUMNS = tuple(EXIF_SCHEMA.names)

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 0x9011, 0x9012
_SUBSEC_ORIGINAL, _SUBSEC_DIGITIZED = 0x9291, 0x9292
_LENS_MODEL = 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_OFFSET_RE = re.compile(r"^[+-]\d{2}:\d{2}$")
# Pillow warns about each broken EXIF block it meets; here that is a null column, not news
warnings.filterwarnings("ignore", message=r"(Possibly )?[Cc]orrupt EXIF", category=UserWarning)
# the header of a file is enough: EXIF sits in the first 64 KiB segment of a JPEG
HEADER_BYTES = 1 << 18


def from_image(img: Any) -> dict[str, Any]:
    """The EXIF columns of an opened (not necessarily loaded) PIL image; {} when it has
    none or they cannot be parsed."""
    try:
        return from_exif(img.getexif())
    except Exception:  # corrupt EXIF never fails a row
        return {}


def from_exif(exif: Any) -> dict[str, Any]:
    """The EXIF columns of a parsed ``PIL.Image.Exif``; {} when empty or unparsable."""
    try:
        if not exif:
            return {}
        out = _base_tags(exif)
        with contextlib.suppress(Exception):  # a broken Exif IFD: IFD0's tags still count
            out.update(_time_tags(exif.get_ifd(_EXIF_IFD)))
        with contextlib.suppress(Exception):
            out.update(_gps(exif.get_ifd(_GPS_IFD)))
        return {k: v for k, v in out.items() if v is not None}
    except Exception:  # corrupt EXIF never fails a row
        return {}


def from_bytes(data: bytes) -> dict[str, Any]:
    """:func:`from_image` for bytes not otherwise opened with Pillow (the nvJPEG path)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return from_image(img)
    except Exception:
        return {}


def from_file(path: str) -> dict[str, Any]:
    """The EXIF columns of an indexed item, reading its header only where it is a plain
    file (a container member is read whole); {} when it cannot be read. Formats with a
    plugin go through :func:`vlmsearch.imaging.formats.file_exif` instead."""
    import io

    from PIL import Image

    try:
        data = read_head(path)
    except OSError as e:
        if e.errno != errno.ENOTDIR:
            return {}
        from vlmsearch.imaging.item_read import read_item

        try:
            data = read_item(path)
        except OSError:
            return {}
    try:
        with Image.open(io.BytesIO(data)) as img:
            return from_image(img)
    except Exception:
        return {}


def to_columns(values: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """One typed array per EXIF column, a slot per item (absent: null)."""
    return {f.name: pa.array([v.get(f.name) for v in values], f.type) for f in EXIF_SCHEMA}


def read_head(path: str) -> bytes:
    """The first :data:`HEADER_BYTES` of a regular file (never blocks on a FIFO)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.read(fd, HEADER_BYTES)
    finally:
        os.close(fd)


def _base_tags(exif: Any) -> dict[str, Any]:
    orientation = exif.get(_ORIENTATION)
    return {
        "camera_make": _text(exif.get(_MAKE)),
        "camera_model": _text(exif.get(_MODEL)),
        "orientation": orientation
        if isinstance(orientation, int) and 1 <= orientation <= 8
        else None,
    }


def _time_tags(ifd: Any) -> dict[str, Any]:
    """``taken_at`` from DateTimeOriginal (else DateTimeDigitized), its offset, the lens."""
    out: dict[str, Any] = {"lens": _text(ifd.get(_LENS_MODEL))}
    for when, offset, subsec in (
        (_DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _SUBSEC_ORIGINAL),
        (_DATETIME_DIGITIZED, _OFFSET_DIGITIZED, _SUBSEC_DIGITIZED),
    ):
        taken = _datetime(ifd.get(when), ifd.get(subsec))
        if taken is not None:
            out["taken_at"] = taken
            off = _text(ifd.get(offset))
            out["taken_at_offset"] = off if off and _OFFSET_RE.match(off) else None
            break
    return out


def _datetime(value: Any, subsec: Any) -> dt.datetime | None:
    """``"YYYY:MM:DD HH:MM:SS"`` (and sub-seconds ``"123"``); None for blanks like
    ``"0000:00:00 00:00:00"`` or anything else that is not a date."""
    text = _text(value)
    if not text:
        return None
    try:
        taken = dt.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    digits = re.sub(r"\D", "", _text(subsec) or "")[:6]
    if digits:
        taken = taken.replace(microsecond=int(digits.ljust(6, "0")))
    return taken


def _gps(ifd: Any) -> dict[str, Any]:
    """Signed decimal degrees from the GPS IFD's (degrees, minutes, seconds) rationals
    and N/S, E/W references; null unless both coordinates parse."""
    lat = _degrees(ifd.get(_GPS_LAT), ifd.get(_GPS_LAT_REF), "S", 90)
    lon = _degrees(ifd.get(_GPS_LON), ifd.get(_GPS_LON_REF), "W", 180)
    if lat is None or lon is None:
        return {}
    return {"gps_lat": lat, "gps_lon": lon}


def _degrees(dms: Any, ref: Any, negative: str, limit: float) -> float | None:
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60 + s / 3600
    if not (0 <= value <= limit) or value != value:  # out of range or NaN (0/0)
        return None
    if (_text(ref) or "").upper().startswith(negative):
        value = -value
    return round(value, 7)


def _text(value: Any) -> str | None:
    """A tag's text without padding (NULs, spaces); None when empty or not text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None
