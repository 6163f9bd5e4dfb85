"""Registry discovery shared by the encoder registries: import every module of a package
(each registers its kinds on import), then every entry point of a group."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from importlib.metadata import entry_points


def import_kinds(
    package: str, path: Iterable[str], group: str, skip: str | tuple[str, ...] = "base"
) -> None:
    """Import the package's modules except ``skip`` (helpers), then the group's plugins."""
    skipped = (skip,) if isinstance(skip, str) else skip
    for info in pkgutil.iter_modules(list(path)):
        if info.name not in skipped:
            importlib.import_module(f"{package}.{info.name}")
    for ep in entry_points(group=group):
        ep.load()
