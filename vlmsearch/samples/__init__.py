"""A handful of small, freely redistributable photos for demos and smoke tests.

The images come from scikit-image's bundled sample data (public domain or CC0; see
``LICENSES.md`` in this folder), re-encoded as JPEG with a longest side of 512 px.

>>> from vlmsearch.samples import copy_samples
>>> copy_samples("demo-images")  # doctest: +SKIP
[PosixPath('demo-images/astronaut.jpg'), PosixPath('demo-images/cameraman.jpg'), ...]

From a shell: ``python -m vlmsearch.samples demo-images``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "copy_samples", "sample_dir", "sample_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def sample_dir() -> Path:
    """The folder holding the sample images (inside the installed package)."""
    return Path(__file__).resolve().parent


def sample_files() -> list[Path]:
    """The sample images, sorted by name."""
    return sorted(
        p for p in sample_dir().iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def copy_samples(dest: str | Path) -> list[Path]:
    """Copy the sample images into ``dest`` (created if missing); returns the copies.

    Files keep their modification times (``shutil.copy2``), so copying again over an
    earlier copy leaves ``vlmsearch index`` nothing to re-encode.
    """
    out_dir = Path(dest).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for src in sample_files():
        target = out_dir / src.name
        shutil.copy2(src, target)
        copies.append(target)
    return copies
