"""Broker URLs: scheme -> driver (imported on first use), password redaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac._internal.urls import load_driver, redact_url, scheme_of
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.transports.base import AsyncTransport, Transport

#: scheme -> "module:Class" of the synchronous driver
TRANSPORTS: dict[str, str] = {
    "memory": "celeriac.transports.memory:MemoryTransport",
    "sqlite": "celeriac.transports.sqlite:SQLiteTransport",
    "redis": "celeriac.transports.redis:RedisTransport",
    "rediss": "celeriac.transports.redis:RedisTransport",
    "redis+socket": "celeriac.transports.redis:RedisTransport",
    "sentinel": "celeriac.transports.redis:RedisTransport",
}

#: scheme -> "module:Class" of a native async driver (others use ThreadedAsyncTransport)
ASYNC_TRANSPORTS: dict[str, str] = {
    s: "celeriac.transports.redis:AsyncRedisTransport"
    for s in ("redis", "rediss", "redis+socket", "sentinel")
}


def create_transport(url: str, **kwargs: Any) -> Transport:
    """The synchronous driver for ``url`` (``memory://``, ``sqlite:///path``, ``redis://...``)."""
    scheme = scheme_of(url)
    if scheme not in TRANSPORTS:
        raise ImproperlyConfigured(
            f"broker_url {redact_url(url)!r}: unknown scheme {scheme!r}; "
            f"accepted: {', '.join(sorted(TRANSPORTS))}"
        )
    cls = load_driver(TRANSPORTS[scheme], "broker_url", url)
    transport: Transport = cls(url, **kwargs)
    return transport


def create_async_transport(url: str, **kwargs: Any) -> AsyncTransport:
    """The driver for the worker's event loop (native async, or a sync driver on I/O threads)."""
    scheme = scheme_of(url)
    if scheme in ASYNC_TRANSPORTS:
        cls = load_driver(ASYNC_TRANSPORTS[scheme], "broker_url", url)
        native: AsyncTransport = cls(url, **kwargs)
        return native
    from celeriac.transports.base import ThreadedAsyncTransport

    return ThreadedAsyncTransport(create_transport(url, **kwargs))


__all__ = ["create_async_transport", "create_transport", "redact_url", "scheme_of"]
