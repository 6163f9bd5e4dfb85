"""The plugin registry shared by encoders, unimodal encoders and rerankers.

Each kind is one module of a package that registers its class with a decorator on
import; third-party packages add kinds through an entry-point group. Modules are only
imported when a kind is first looked up, so ``--help`` and plain commands stay fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Hashable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``KIND:ARG`` -> (KIND, ARG); a bare ``KIND`` -> (KIND, None)."""
    kind, sep, arg = spec.strip().partition(":")
    return kind.strip(), (arg.strip() or None) if sep else None


class Registry(Generic[T]):
    """Classes by key (``cls.kind`` unless ``key`` says otherwise), discovered lazily."""

    def __init__(
        self,
        package: str,
        path: Iterable[str],
        group: str,
        skip: tuple[str, ...] = ("base",),
        key: Callable[[Any], Hashable] = lambda cls: cls.kind,
        builtins: tuple[str, ...] = (),
    ) -> None:
        self._package, self._path, self._group, self._skip = package, list(path), group, skip
        # built-in kinds that live in another package (ASIF's encoder, the region reranker),
        # imported by name so that the registry does not import upward
        self._builtins = builtins
        self._key = key
        self._classes: dict[Hashable, type[T]] = {}
        self._discovered = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator adding ``cls`` under its key."""
        self._classes[self._key(cls)] = cls
        return cls

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for info in pkgutil.iter_modules(self._path):
            if info.name not in self._skip:
                importlib.import_module(f"{self._package}.{info.name}")
        for name in self._builtins:
            importlib.import_module(name)
        for ep in entry_points(group=self._group):
            ep.load()

    def kinds(self) -> list[Hashable]:
        self._discover()
        return list(self._classes)

    def get(self, key: Hashable) -> type[T] | None:
        self._discover()
        return self._classes.get(key)
