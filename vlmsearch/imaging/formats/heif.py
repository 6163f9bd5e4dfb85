"""HEIC/HEIF (libheif through ``pillow-heif``) and AVIF (Pillow's own decoder when it has
one, as Pillow >= 11.3 wheels do; else pillow-heif when its libheif has an AV1 decoder).

pillow-heif applies the HEIF rotation and mirroring while decoding and resets the EXIF
orientation to 1 so that nothing rotates twice; the orientation the file had is in
``info["original_orientation"]``, which is what the ``orientation`` column records.
"""

from __future__ import annotations

import io
from typing import Any

from vlmsearch.imaging.format_extensions import AVIF_EXTENSIONS, HEIF_EXTENSIONS
from vlmsearch.imaging.formats import FormatError, FormatPlugin, Opened, missing_extra

# ISO base media "ftyp" major brands (pillow-heif's list, plus the AVIF ones)
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
HEIF_BRANDS += (b"mif1", b"msf1")
AVIF_BRANDS = (b"avif", b"avis")


def _brand(head: bytes) -> bytes | None:
    return head[8:12] if head[4:8] == b"ftyp" else None


def _heif_file(data: bytes, what: str) -> Any:
    try:
        import pillow_heif
    except ImportError:
        raise missing_extra(what) from None
    try:
        return pillow_heif.HeifImageFile(io.BytesIO(data))
    except (SyntaxError, OSError, ValueError, RuntimeError, EOFError) as e:
        raise FormatError(f"cannot decode {what}: {e}") from None


def _columns(img: Any) -> dict[str, Any]:
    from vlmsearch.imaging import exif

    meta = exif.from_image(img)
    original = img.info.get("original_orientation")
    if isinstance(original, int) and 1 <= original <= 8:
        meta["orientation"] = original
    return meta


def open_heif(data: bytes, max_pixels: int) -> Opened:
    img = _heif_file(data, "HEIC/HEIF")
    return Opened(img, "HEIF", _columns(img))


def heif_exif(data: bytes) -> dict[str, Any]:
    try:
        return _columns(_heif_file(data, "HEIC/HEIF"))
    except FormatError:
        return {}


def _pillow_avif() -> bool:
    from PIL import features

    try:
        return bool(features.check("avif"))
    except ValueError:  # a Pillow that does not know the feature
        return False


def open_avif(data: bytes, max_pixels: int) -> Opened:
    if _pillow_avif():
        from PIL import Image

        img = Image.open(io.BytesIO(data))
        return Opened(img, img.format or "AVIF")
    try:
        img = _heif_file(data, "AVIF")
    except FormatError as e:
        raise FormatError(
            f"{e} (AVIF needs a Pillow with AVIF support, as Pillow >= 11.3 wheels have, "
            "or a pillow-heif whose libheif decodes AV1)"
        ) from None
    return Opened(img, "AVIF", _columns(img))


def avif_exif(data: bytes) -> dict[str, Any]:
    from vlmsearch.imaging import exif

    try:
        opened = open_avif(data, 0)
    except (FormatError, OSError, SyntaxError, ValueError):
        return {}
    return opened.exif if opened.exif is not None else exif.from_image(opened.image)


HEIF = FormatPlugin(
    name="HEIC/HEIF",
    extensions=HEIF_EXTENSIONS,
    extra="formats",
    sniff=lambda head: _brand(head) in HEIF_BRANDS,
    open=open_heif,
    read_exif=heif_exif,
)
AVIF = FormatPlugin(
    name="AVIF",
    extensions=AVIF_EXTENSIONS,
    extra="formats",
    sniff=lambda head: _brand(head) in AVIF_BRANDS,
    open=open_avif,
    read_exif=avif_exif,
    browser_native=True,  # Chrome 85+, Firefox 93+, Safari 16+
)
