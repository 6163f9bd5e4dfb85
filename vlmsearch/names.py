"""File names as the OS has them, as stored, and as shown.

Three forms of one name:

* **OS form**: a ``str`` as Python's file functions give it (``os.fsdecode``): bytes that
  are not valid UTF-8 become lone surrogates (``surrogateescape``), so ``open()`` gets
  the exact bytes back. Everything in memory that names a file uses this form.
* **Readable form**: valid UTF-8 text, each undecodable byte written ``\\xNN``. It is what
  JSON, CSV, HTML and the metadata ``path`` column hold; Arrow, Parquet and HTTP cannot
  carry lone surrogates. Where it differs from the OS form, the metadata table keeps the
  exact bytes in ``path_bytes`` (see :func:`to_columns`), so nothing is lost.
* **Terminal form**: the readable form with control characters (ESC, CR, LF, TAB, other
  C0/C1 codes, bidi overrides) also written as escapes, so a file name can neither move
  the cursor, retitle the window nor start a new table row.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vlmsearch.errors import CollectionError

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0, DEL and C1 controls; bidi marks, embeddings, overrides and isolates; line and
# paragraph separators (they break lines in some terminals)
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def readable(name: str) -> str:
    """Valid UTF-8 text for an OS-form name: undecodable bytes become ``\\xNN``."""
    return _SURROGATE.sub(_escape, name)


def terminal(text: str) -> str:
    """Text safe to print to a terminal: control characters and undecodable bytes
    become visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), one line stays one line."""
    return _CONTROL.sub(_escape, text)


def readable_data(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples, strings) with every string in readable form."""
    if isinstance(obj, str):
        return readable(obj)
    if isinstance(obj, dict):
        return {readable_data(k): readable_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [readable_data(v) for v in obj]
    return obj


def to_columns(os_name: str) -> tuple[str, bytes | None]:
    """(``path``, ``path_bytes``) column values for an OS-form relative path:
    ``path_bytes`` holds the exact bytes only when the name is not valid UTF-8."""
    shown = readable(os_name)
    return shown, (os.fsencode(os_name) if shown != os_name else None)


def from_columns(path: str, path_bytes: bytes | None) -> str:
    """The OS-form relative path of a metadata row (inverse of :func:`to_columns`)."""
    return os.fsdecode(path_bytes) if path_bytes is not None else path


def row_path(row: dict[str, Any]) -> str:
    """The OS-form relative path of a metadata row given as a dict."""
    return from_columns(row["path"], row.get("path_bytes"))


def column_paths(table: Any) -> list[str]:
    """The OS-form relative paths of every row of a metadata table (pyarrow)."""
    paths = table["path"].to_pylist()
    if "path_bytes" not in table.column_names:
        return paths
    raw = table["path_bytes"].to_pylist()
    return [from_columns(p, b) for p, b in zip(paths, raw, strict=True)]


def require_utf8_folder(path: Path) -> None:
    """Refuse a collection folder whose path is not UTF-8: Arrow and FAISS take paths as
    UTF-8 text and cannot open it (the indexed folder and its files may have any name)."""
    if readable(str(path)) != str(path):
        raise CollectionError(
            f"the collection folder {readable(str(path))} has a path that is not valid UTF-8, "
            "which the Parquet and FAISS libraries cannot open; pass --collection with a "
            "UTF-8 path"
        )
