"""Reading a consistent commit while writers commit.

A reader loads the manifest, then the files it names. Writers keep retired files for a
while (:data:`vlmsearch.storage.gc.RETAIN_SECONDS`), but a reader slower than that (or one
that loads lazily much later) can find a file gone; it then moves to the newer commit and
loads again, rather than fail. A file missing while no newer commit exists is real damage
and is raised as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from vlmsearch.errors import CollectionError
from vlmsearch.storage import integrity, metadata, segments
from vlmsearch.storage.layout import Layout
from vlmsearch.storage.lock import being_created

ATTEMPTS = 5
F = TypeVar("F", bound=Callable[..., Any])


def read_snapshot(layout: Layout) -> dict[str, Any]:
    """The committed manifest, once the metadata files it names are verified (present,
    of the recorded size and digest); the rows themselves are read on demand."""
    manifest = layout.read_manifest()
    if int(manifest.get("generation") or 0) == 0:  # the empty manifest a first run writes
        creating = being_created(layout.path)
        if creating:
            raise CollectionError(creating)
    for attempt in range(ATTEMPTS):
        try:
            _verify_metadata(layout, manifest)
            return manifest
        except (FileNotFoundError, integrity.MissingFileError):
            newer = newer_manifest(layout, manifest)
            if newer is None or attempt == ATTEMPTS - 1:
                raise
            manifest = newer
    raise AssertionError("unreachable")


def newer_manifest(layout: Layout, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The committed manifest when it is another commit than ``manifest``, else None."""
    try:
        current = layout.read_manifest()
    except Exception:  # noqa: BLE001 -- unreadable now: nothing newer to move to
        return None
    same = current.get("generation") == manifest.get("generation") and current.get(
        "updated_at"
    ) == manifest.get("updated_at")
    return None if same else current


def reread(layout: Layout, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The newer commit's manifest when there is one, else None."""
    if newer_manifest(layout, manifest) is None:
        return None
    return read_snapshot(layout)


def _verify_metadata(layout: Layout, manifest: dict[str, Any]) -> None:
    for name in segments.metadata_files(manifest):
        integrity.verify(layout.path, manifest, name)
        if name.endswith(".parquet") and name not in (manifest.get("checksums") or {}):
            # no digest recorded (written before checksums): the page checksums and a
            # readable footer, so that damage is named here, not inside a query later
            integrity.read_checked(layout.path, manifest, name, metadata.check_parquet)


def on_one_commit(method: F) -> F:
    """A read whose answer comes from one commit: when the object moved to a newer commit
    during the call (``self.moves`` changed; ids from the old table may not exist in the
    new one), the call runs again, now wholly on the newer commit."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        for _ in range(ATTEMPTS):
            before = self.moves
            result = method(self, *args, **kwargs)
            if self.moves == before:
                break
        return result

    return wrapper  # type: ignore[return-value]
