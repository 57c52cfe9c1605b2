"""Where and how to connect to one Redis server, for the project's own connections (``Endpoint``).

Both of them take one: the worker's lean asyncio connection (``redis_wire.Connection``) and the
client's raw RESP3 socket (``redis_raw.RawConnection``). Only what they need: a TCP host/port
or a unix socket path, the session (username/password, db, client name), the socket's timeouts
and TCP keepalive. Two constructors, both from redis-py's own words for it, both returning None
where a connection of redis-py's is needed (TLS, Sentinel, credential providers, custom
connection classes, URL query options other than the db):

- ``Endpoint.from_url(url, kwargs)``: a ``redis://`` or ``unix://`` URL and the keyword
  arguments a redis-py client would get with it; what the URL says wins, as in redis-py's
  ``from_url``.
- ``Endpoint.from_client(client)``: the connection-pool kwargs of a redis-py client.

The rest of what each connection asks (hiredis, POSIX, which transport options it honours) is
the caller's: ``transports.redis_commands.lean_endpoint`` and ``redis_raw.raw_spec``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from redis.connection import parse_url

#: what a redis-py URL may hold for ``from_url`` (a query option other than ``db``: None)
URL_PARTS = frozenset({"host", "port", "path", "db", "username", "password"})


class SocketOptions(Protocol):
    """What ``Endpoint.set_keepalive`` needs of a socket (a plain one or asyncio's)."""

    def setsockopt(self, level: int, optname: int, value: int | bytes, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 6379
    #: a unix socket path (then ``host``/``port`` are not used)
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    client_name: str | None = None
    #: seconds to connect (None: each connection's own rule)
    connect_timeout: float | None = None
    #: redis-py's ``socket_timeout`` (None: each connection's own rule)
    timeout: float | None = None
    keepalive: bool = False
    keepalive_options: Mapping[int, int | bytes] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The unix socket path, or ``host:port``: for messages."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    def set_keepalive(self, sock: SocketOptions) -> None:
        """Turn on TCP keepalive with its options on ``sock``, if asked for."""
        if not self.keepalive:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in self.keepalive_options.items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)

    @classmethod
    def from_url(cls, url: str, kwargs: Mapping[str, Any]) -> Endpoint | None:
        """The endpoint of a ``redis://``/``unix://`` URL and redis-py client ``kwargs``, or None
        for any other scheme or a URL with query options other than the db."""
        if url.partition("://")[0] not in ("redis", "unix"):
            return None
        parts = dict(parse_url(url))  # type: ignore[no-untyped-call]
        connection_class = parts.pop("connection_class", redis.Connection)
        if not set(parts) <= URL_PARTS:
            return None
        return cls._of(connection_class, {**kwargs, **parts})

    @classmethod
    def from_client(cls, client: redis.Redis) -> Endpoint | None:
        """The endpoint of ``client``'s connection pool, or None when it is not a plain pool of
        TCP or unix socket connections with at most a username and password."""
        pool = client.connection_pool
        if type(pool) is not redis.ConnectionPool:
            return None
        kwargs: dict[str, Any] = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None or kwargs.get("redis_connect_func"):
            return None
        return cls._of(pool.connection_class, kwargs)

    @classmethod
    def _of(cls, connection_class: object, kwargs: Mapping[str, Any]) -> Endpoint | None:
        """From redis-py connection ``kwargs`` for ``connection_class`` (None: not plain TCP or a
        unix socket)."""
        if connection_class is redis.UnixDomainSocketConnection:
            path: str | None = str(kwargs["path"])
        elif connection_class is redis.Connection:
            path = None
        else:
            return None
        options = kwargs.get("socket_keepalive_options")
        return cls(
            host=str(kwargs.get("host") or "localhost"),
            port=int(kwargs.get("port") or 6379),
            path=path,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db") or 0),
            client_name=kwargs.get("client_name"),
            connect_timeout=kwargs.get("socket_connect_timeout"),
            timeout=kwargs.get("socket_timeout"),
            keepalive=bool(kwargs.get("socket_keepalive")),
            keepalive_options=dict(options) if isinstance(options, Mapping) else {},
        )


__all__ = ["URL_PARTS", "Endpoint", "SocketOptions"]
