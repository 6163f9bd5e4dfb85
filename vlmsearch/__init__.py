"""vlmsearch: vision-language retrieval over local image folders.

The public API is :class:`Collection`; it is imported lazily so that
``import vlmsearch`` (and ``vlmsearch --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmsearch._version import __version__

if TYPE_CHECKING:
    from vlmsearch.collection import Collection, Hit

__all__ = ["Collection", "Hit", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Collection", "Hit"):
        from vlmsearch import collection

        return getattr(collection, name)
    raise AttributeError(f"module 'vlmsearch' has no attribute {name!r}")
