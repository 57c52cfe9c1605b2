"""Process-wide named instances: the shared state behind ``memory://<name>`` brokers and stores.

Every driver opened on the same name in one process gets the same instance; ``reset`` forgets
one name (or all), so tests can start empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def memory_name(url: str) -> str:
    """The name in a ``memory://<name>`` URL (``""`` is the process's default one)."""
    rest = url.partition("://")[2] if "://" in url else ""
    return rest.partition("?")[0].strip("/")


class Named(Generic[T]):
    """name -> instance, created by ``factory`` on first use; thread-safe."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._items: dict[str, T] = {}

    def get(self, name: str) -> T:
        with self._lock:
            item = self._items.get(name)
            if item is None:
                item = self._items[name] = self._factory()
            return item

    def reset(self, name: str | None = None) -> None:
        """Forget ``name``'s instance (every one when None); open drivers keep the old one."""
        with self._lock:
            if name is None:
                self._items.clear()
            else:
                self._items.pop(name, None)
