"""Sidecar fields: a caption (``key.txt``) and a JSON object of fields (``key.json``)
stored beside an image, in a folder (img2dataset's ``files`` layout) or a tar shard."""

from __future__ import annotations

import json
import os
from typing import Any

from vlmsearch.imaging.file_read import read_image_file

MAX_SIDECAR_BYTES = 1 << 20  # a caption or a json of fields: anything larger is refused


def folder_sidecars(image_path: str, sidecars: tuple[str, ...]) -> dict[str, Any]:
    """The img2dataset ``files`` layout: ``key.txt`` and ``key.json`` beside ``key.jpg``."""
    folder = os.path.dirname(image_path)
    texts: dict[str, bytes] = {}
    for name in sidecars:
        try:
            texts[name] = read_image_file(os.path.join(folder, name), MAX_SIDECAR_BYTES)
        except OSError:
            continue  # gone since the scan: the row simply lacks it
    return sidecar_fields(texts)


def sidecar_fields(texts: dict[str, bytes]) -> dict[str, Any]:
    """Fields from sidecar contents by name: ``*.txt`` is the caption, ``*.json`` an
    object whose fields become columns (an unreadable one becomes ``sidecar_error``)."""
    out: dict[str, Any] = {}
    for name, data in sorted(texts.items()):
        if name.lower().endswith(".txt"):
            out["caption"] = data.decode("utf-8", "replace").strip()
        elif name.lower().endswith(".json"):
            try:
                obj = json.loads(data)
            except ValueError as e:
                out["sidecar_error"] = f"{name}: not JSON ({e})"
                continue
            if isinstance(obj, dict):
                for k, v in obj.items():
                    out.setdefault(str(k), v)
    return out
