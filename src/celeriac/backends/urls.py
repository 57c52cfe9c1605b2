"""Result-backend URLs: scheme -> key-value store driver (imported on first use).

``STORES`` maps a scheme to the driver's ``KeyValueStore``; ``ASYNC_STORES`` to its
``AsyncKeyValueStore`` when the driver has a native async client (the worker's
``AsyncResultBackend`` then writes on its event loop; other drivers run on an I/O thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac._internal.urls import load_driver, redact_url, scheme_of
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.backends.base import AsyncKeyValueStore, KeyValueStore

STORES: dict[str, str] = {
    "memory": "celeriac.backends.memory:MemoryStore",
    "cache+memory": "celeriac.backends.memory:MemoryStore",
    "sqlite": "celeriac.backends.sqlite:SQLiteStore",
    "db+sqlite": "celeriac.backends.sqlite:SQLiteStore",
    "redis": "celeriac.backends.redis:RedisStore",
    "rediss": "celeriac.backends.redis:RedisStore",
    "redis+socket": "celeriac.backends.redis:RedisStore",
    "sentinel": "celeriac.backends.redis:RedisStore",
}

#: scheme -> "module:Class" of a native async store (the same data as ``STORES[scheme]``)
ASYNC_STORES: dict[str, str] = {
    s: "celeriac.backends.redis:AsyncRedisStore"
    for s in ("redis", "rediss", "redis+socket", "sentinel")
}


def create_store(url: str, **kwargs: Any) -> KeyValueStore:
    scheme = scheme_of(url)
    if scheme not in STORES:
        raise ImproperlyConfigured(
            f"result_backend {redact_url(url)!r}: unknown scheme {scheme!r}; "
            f"accepted: {', '.join(sorted(STORES))}"
        )
    cls = load_driver(STORES[scheme], "result_backend", url)
    store: KeyValueStore = cls(url, **kwargs)
    return store


def create_async_store(url: str, **kwargs: Any) -> AsyncKeyValueStore | None:
    """The native async store for ``url``, or None when its driver has none."""
    scheme = scheme_of(url)
    if scheme not in ASYNC_STORES:
        return None
    cls = load_driver(ASYNC_STORES[scheme], "result_backend", url)
    store: AsyncKeyValueStore = cls(url, **kwargs)
    return store


def native_async_store(store: KeyValueStore) -> AsyncKeyValueStore | None:
    """A native async store over the same data as ``store`` (same URL and options), or None.

    Only for the exact class ``STORES`` registers for the scheme: a subclass or a stand-in may
    behave differently, so it keeps the thread adapter.
    """
    scheme = scheme_of(store.url)
    if scheme not in ASYNC_STORES or scheme not in STORES:
        return None
    if type(store) is not load_driver(STORES[scheme], "result_backend", store.url):
        return None
    return create_async_store(store.url, options=dict(store.options))
