"""vlmsearch: vision-language retrieval over local image folders.

The public API is :class:`Collection`; it is imported lazily so that
``import vlmsearch`` (and ``vlmsearch --help``) stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from vlmsearch._version import __version__

# onnxruntime (torch-free queries) otherwise writes a telemetry device id and database to
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ on first use; set before it is imported.
# A user who wants its telemetry sets ORT_DISABLE_TELEMETRY=0 themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    from vlmsearch.collection import Collection
    from vlmsearch.results import Hit, Prediction

__all__ = ["Collection", "Hit", "Prediction", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Collection":
        from vlmsearch.collection import Collection

        return Collection
    if name in ("Hit", "Prediction"):
        from vlmsearch import results

        return getattr(results, name)
    raise AttributeError(f"module 'vlmsearch' has no attribute {name!r}")
