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


def reason(e: BaseException) -> str:
    """A library error's message without its wrapping: PyAV's ``[Errno N] text: 'path'``
    becomes ``text``, LibRaw's ``b'text'`` becomes ``text``."""
    msg: object = getattr(e, "strerror", None) or (e.args[0] if e.args else "") or str(e)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return str(msg) or type(e).__name__
