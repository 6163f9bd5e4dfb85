"""User-facing errors: the CLI prints these as one line, never a traceback."""

from __future__ import annotations


class VlmsearchError(Exception):
    """An error whose message is meant for the user, complete and actionable."""


class CollectionError(VlmsearchError):
    """The collection is missing, empty, locked or inconsistent."""


class ModelError(VlmsearchError):
    """A model cannot be loaded, or does not match the collection's."""


class QueryError(VlmsearchError):
    """A query, filter or parameter is invalid."""


class BusyError(VlmsearchError):
    """Enough work of this kind is running; the same request may succeed later."""
