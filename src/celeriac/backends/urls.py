"""Result-backend URLs: scheme -> key-value store driver (imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac._internal.urls import load_driver, redact_url, scheme_of
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.backends.base import KeyValueStore

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
