"""One raw RESP3 connection a client thread waits for result keys on (``WatchLine``).

redis-py's ``PubSub`` and command path cost a client more CPU than the rest of a ``delay().get()``
round trip (a pool checkout, retry wrappers, hooks, a ``poll`` before every read, and the wait
needs a second connection for its ``GET``). A ``WatchLine`` is a plain socket and a
``hiredis.Reader`` speaking RESP3, where a subscribed connection may still run ``GET``:

- per wait, one write: ``UNSUBSCRIBE <last channel>`` (if another), ``SUBSCRIBE <key>``, ``GET
  <key>``. Redis runs one connection's commands in order, so the ``GET`` runs once the
  subscription is live: a write after it (``SET`` and ``PUBLISH`` in one atomic step) is
  published to this connection, one before it is what the ``GET`` returns. A wait for the key
  it already listens to sends the ``GET`` alone.
- everything that arrives before the ``GET``'s reply is stale (confirmations, messages of the
  last channel, messages the ``GET`` already covers) and is skipped; after it, a message on
  the key's channel carries the new value.
- between messages the key is re-read (deletes and expiry publish nothing) with the same
  ``GET``, backing off from 50 ms to ``recheck`` seconds.

Reads of a reply block for at most the client's ``socket_timeout`` (``SO_RCVTIMEO``: no
``poll`` per read); a wait for a message is one ``poll`` with the wait's own timeout. Socket
errors are raised as ``redis.ConnectionError``/``redis.TimeoutError`` (the caller drops the
line and its ``Link`` policy retries); a server without ``HELLO 3`` (Redis < 6) raises
``Unsupported`` and the caller uses ``PubSub`` instead.

Only plain TCP and Unix sockets, with a username/password or none (``line_spec``); TLS,
Sentinel, credential providers and custom connection classes keep redis-py's ``PubSub``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import redis

from celeriac._internal import forks

#: returned by the reader when a reply is incomplete (RESP3 also has a false boolean)
_MORE = object()
#: ``_drain`` found no message on the channel
_NOTHING = object()
_READ_SIZE = 65536
_FIRST_RECHECK = 0.05


class Unsupported(redis.RedisError):
    """The server refused ``HELLO 3`` (Redis < 6): wait through ``PubSub`` instead."""


@dataclass(frozen=True, slots=True)
class LineSpec:
    """Where and how to connect: ``(host, port)`` or a Unix socket path, and the session."""

    address: tuple[str, int] | str
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    connect_timeout: float | None
    timeout: float | None
    keepalive: bool
    keepalive_options: dict[int, Any]

    def describe(self) -> str:
        if isinstance(self.address, str):
            return self.address
        return f"{self.address[0]}:{self.address[1]}"


def line_spec(client: redis.Redis) -> LineSpec | None:
    """How to open ``WatchLine``s to ``client``'s server, or None when its connections are not
    plain TCP/Unix ones with at most a username and password (TLS, Sentinel, custom classes,
    credential providers), or when hiredis with RESP3 pushes is not installed."""
    try:
        import hiredis
    except ImportError:
        return None
    if not hasattr(hiredis, "PushNotification"):
        return None
    pool = client.connection_pool
    if type(pool) is not redis.ConnectionPool:
        return None
    kwargs: dict[str, Any] = pool.connection_kwargs
    if kwargs.get("credential_provider") is not None or kwargs.get("redis_connect_func"):
        return None
    address: tuple[str, int] | str
    if pool.connection_class is redis.Connection:
        address = (str(kwargs.get("host") or "localhost"), int(kwargs.get("port") or 6379))
    elif pool.connection_class is redis.UnixDomainSocketConnection:
        address = str(kwargs["path"])
    else:
        return None
    options = kwargs.get("socket_keepalive_options")
    return LineSpec(
        address=address,
        db=int(kwargs.get("db") or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        client_name=kwargs.get("client_name"),
        connect_timeout=kwargs.get("socket_connect_timeout"),
        timeout=kwargs.get("socket_timeout"),
        keepalive=bool(kwargs.get("socket_keepalive")),
        keepalive_options=dict(options) if isinstance(options, dict) else {},
    )


def _connect(spec: LineSpec) -> socket.socket:
    if isinstance(spec.address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(spec.connect_timeout)
            sock.connect(spec.address)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection(spec.address, spec.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if spec.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in spec.keepalive_options.items():
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(None)  # blocking: one system call per read, bounded by SO_RCVTIMEO
    if spec.timeout is not None:
        seconds = max(float(spec.timeout), 0.001)
        timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    return sock


class WatchLine:
    """One RESP3 connection, used by one thread at a time (see the module docstring)."""

    def __init__(self, spec: LineSpec) -> None:
        import hiredis

        self.spec = spec
        #: the fork generation it was opened in: a forked child never touches its socket
        self.generation = forks.generation()
        self.closed = False
        #: the channel this connection is subscribed to (None: none)
        self.channel: bytes | None = None
        self._pack: Any = hiredis.pack_command  # its stub types a 1-tuple
        self._push = hiredis.PushNotification
        self._reader = hiredis.Reader(replyError=redis.ResponseError, notEnoughData=_MORE)
        try:
            self._sock = _connect(spec)
        except OSError as exc:
            self.closed = True
            raise redis.ConnectionError(f"Error connecting to {spec.describe()}: {exc}") from exc
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> None:
        spec = self.spec
        hello: list[Any] = ["HELLO", 3]
        if spec.password is not None:
            hello += ["AUTH", spec.username or "default", spec.password]
        if spec.client_name:
            hello += ["SETNAME", spec.client_name]
        data = self._pack(tuple(hello))
        if spec.db:
            data += self._pack(("SELECT", spec.db))
        self._send(data)
        try:
            self._reply()
        except redis.ResponseError as exc:
            if str(exc).startswith("LOADING"):
                raise redis.BusyLoadingError(str(exc)) from exc
            raise Unsupported(f"HELLO 3 refused by {spec.describe()}: {exc}") from exc
        if spec.db:
            self._reply()

    # -- the wire --------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except BlockingIOError as exc:
            raise redis.TimeoutError(f"Timeout writing to {self.spec.describe()}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error writing to {self.spec.describe()}: {exc}") from exc

    def _fill(self) -> None:
        """Read what the socket holds (blocking up to ``socket_timeout``) into the reader."""
        try:
            data = self._sock.recv(_READ_SIZE)
        except BlockingIOError as exc:
            raise redis.TimeoutError(f"Timeout reading from {self.spec.describe()}") from exc
        except OSError as exc:
            raise redis.ConnectionError(
                f"Error reading from {self.spec.describe()}: {exc}"
            ) from exc
        if not data:
            raise redis.ConnectionError(f"Connection closed by {self.spec.describe()}")
        self._reader.feed(data)

    def _reply(self) -> Any:
        """The next reply that is not a push; the pushes before it are skipped (stale)."""
        reader, push = self._reader, self._push
        while True:
            reply = reader.gets()
            if reply is _MORE:
                self._fill()
            elif type(reply) is not push:
                if isinstance(reply, redis.ResponseError):
                    raise reply
                return reply

    def _drain(self, channel: bytes) -> Any:
        """The data of the last complete message on ``channel`` in the reader (``_NOTHING``:
        none); every other push is skipped. Nothing but pushes is expected here."""
        reader, push = self._reader, self._push
        found: Any = _NOTHING
        while True:
            reply = reader.gets()
            if reply is _MORE:
                return found
            if type(reply) is not push:
                raise redis.ConnectionError(f"Unexpected reply from {self.spec.describe()}")
            if len(reply) == 3 and reply[0] == b"message" and reply[1] == channel:
                found = reply[2]

    # -- waiting ---------------------------------------------------------------------------------
    def watch(
        self, channel: bytes, previous: bytes | None, deadline: float, recheck: float
    ) -> bytes | None:
        """The value of the key ``channel`` once it differs from ``previous``, or at
        ``deadline`` (monotonic); its reply is read even when ``deadline`` has passed."""
        get = self._pack(("GET", channel))
        if self.channel == channel:
            data = get
        else:
            data = self._pack(("SUBSCRIBE", channel)) + get
            if self.channel is not None:
                data = self._pack(("UNSUBSCRIBE", self.channel)) + data
            self.channel = channel
        self._send(data)
        value: bytes | None = self._reply()
        step = _FIRST_RECHECK
        while True:
            pushed = self._drain(channel)
            if pushed is not _NOTHING:
                value = pushed
            remaining = deadline - time.monotonic()
            if value != previous or remaining <= 0:
                return value
            if self._poller.poll(min(remaining, step) * 1000):
                self._fill()
            else:  # quiet: deletes and expiry publish nothing, read the key again
                step = min(step * 2, recheck)
                self._send(get)
                value = self._reply()

    def close(self) -> None:
        """Close the socket (in a forked child: only this process's descriptor). Idempotent."""
        self.closed = True
        sock = getattr(self, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
