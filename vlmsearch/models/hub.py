"""Loading models from the Hugging Face hub without waiting on a network that is not there.

huggingface_hub retries an unreachable hub for about a minute before it falls back to its
cache; a quick reachability check and its offline switch make a cached model load at once
and an uncached one fail at once. Shared by every loader of hub weights (open_clip, timm,
sentence-transformers, transformers)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co accepts a connection within ``timeout`` seconds."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class hf_offline:
    """Temporarily put huggingface_hub in offline mode so cached weights load at once."""

    def __enter__(self) -> None:
        from huggingface_hub import constants

        self._env = os.environ.get("HF_HUB_OFFLINE")
        self._const = constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: object) -> None:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = self._const
        if self._env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = self._env


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Silence the root logger (libraries that log their own errors there, which vlmsearch
    reports itself)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)
