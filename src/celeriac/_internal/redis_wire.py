"""A lean asyncio Redis connection (RESP2): an ``asyncio.Protocol`` and a ``hiredis.Reader``.

The worker's loop thread spends most of its CPU on Redis calls inside redis.asyncio's generic
machinery (pool checkout, retry wrapper, async timeouts, per-command parsing). ``Connection``
does only what the worker's calls need: commands packed to bytes (``resp.pack``),
any number of them in one write (a pipeline), replies matched in order to a FIFO of pending
calls, one future per call whatever its length.

- Replies are returned raw (bytes, ints, None, lists), as redis-py returns them without
  ``decode_responses``. An error reply stands in its place in the reply list as the redis-py
  exception the rest of the code handles (``NoScriptError`` for NOSCRIPT, ``BusyLoadingError``
  for LOADING, ``AuthenticationError`` for WRONGPASS/NOAUTH, ``ResponseError`` otherwise):
  the caller decides what to raise.
- A lost connection (reset, closed, refused) fails every pending call with
  ``redis.ConnectionError``; a call whose reply is later than its read deadline fails every
  pending call with ``redis.TimeoutError`` and drops the connection. The next call connects
  again. Both are what the ``Link`` reconnect policy retries.
- Where and how to connect: an ``Endpoint`` (``redis_endpoint``, shared with the client's raw
  connection).
- Read deadline: ``Endpoint.timeout`` (None: ``DEFAULT_TIMEOUT``) after the call was sent, plus
  the ``block`` seconds of a blocking command (``BLMOVE`` ... ``t``). One timer checks the
  oldest pending call (the only one that can be late: replies come in order), re-armed only
  when it fires.
- Connecting: TCP host/port (with the endpoint's keepalive) or a unix socket, within
  ``connect_timeout`` (None: the read deadline); then AUTH (username/password), CLIENT SETNAME,
  SELECT, and CLIENT ID (``client_id``, for CLIENT UNBLOCK from another connection), in one
  write (``handshake``).
- One event loop at a time: a connection made under another loop is dropped and made again.

Imported only when the Redis transport picks it (``transports.redis_commands``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as rex

from celeriac._internal.redis_endpoint import Endpoint
from celeriac._internal.redis_errors import error_of
from celeriac._internal.resp import pack

#: the read deadline of a call when the endpoint sets none (seconds)
DEFAULT_TIMEOUT = 30.0


def read_timeout(endpoint: Endpoint) -> float:
    """The read deadline of a call, seconds after it was sent (``DEFAULT_TIMEOUT``: none set)."""
    return endpoint.timeout if endpoint.timeout else DEFAULT_TIMEOUT


def handshake(ep: Endpoint) -> list[tuple[Any, ...]]:
    """The commands sent on a new connection, before any other."""
    commands: list[tuple[Any, ...]] = []
    if ep.password is not None:
        auth = (ep.username, ep.password) if ep.username else (ep.password,)
        commands.append(("AUTH", *auth))
    if ep.client_name:
        commands.append(("CLIENT", "SETNAME", ep.client_name))
    if ep.db:
        commands.append(("SELECT", ep.db))
    commands.append(("CLIENT", "ID"))
    return commands


class _Call:
    """One write's worth of commands waiting for its replies."""

    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.deadline = deadline
        self.replies: list[Any] = []


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Done callback of a call nobody awaits: its failure is expected, not worth a log line."""
    if not future.cancelled():
        future.exception()


class _Protocol(asyncio.Protocol):
    """The reading side: replies to the oldest pending call; loss and deadline fail them all."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str, timeout: float) -> None:
        self.loop = loop
        self.where = where
        #: read deadline of a call, seconds after it was sent
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Call] = deque()
        self.lost = False
        self._reader = hiredis.Reader()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        reader, pending = self._reader, self.pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(rex.ConnectionError(f"Protocol error from {self.where}: {exc}"))
                return
            if reply is False:
                return
            if isinstance(reply, hiredis.ReplyError):
                reply = error_of(str(reply))
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.fail(rex.ConnectionError(f"Unexpected reply from {self.where}"))
                return
            call = pending[0]
            call.replies.append(reply)
            if len(call.replies) == call.count:
                pending.popleft()
                if not call.future.done():
                    call.future.set_result(call.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else ""
        self.fail(rex.ConnectionError(f"Connection to {self.where} lost{why}"))

    def send(self, packed: bytes, count: int, block: float = 0.0) -> asyncio.Future[list[Any]]:
        """Write ``packed`` (``count`` commands); the future gets their replies in order."""
        if self.lost or self.transport is None:
            raise rex.ConnectionError(f"Connection to {self.where} lost")
        future = self.loop.create_future()
        deadline = self.loop.time() + self.timeout + block
        self.pending.append(_Call(future, count, deadline))
        self.transport.write(packed)
        if self._timer is None and math.isfinite(deadline):
            self._timer = self.loop.call_at(deadline, self._check)
        return future

    def _check(self) -> None:
        """The timer: fail everything when the oldest call is late, else wait for its deadline."""
        self._timer = None
        if not self.pending or self.lost:
            return
        deadline = self.pending[0].deadline
        if deadline <= self.loop.time():
            self.fail(rex.TimeoutError(f"Timeout reading from {self.where}"))
        else:
            self._timer = self.loop.call_at(deadline, self._check)

    def fail(self, error: rex.RedisError) -> None:
        """Drop the connection; every pending call raises (a copy of) ``error``."""
        if self.lost:
            return
        self.lost = True
        pending, self.pending = self.pending, deque()
        for call in pending:
            if not call.future.done():
                call.future.set_exception(type(error)(*error.args))
        with contextlib.suppress(RuntimeError):  # its loop is closed: nothing left to do
            if self._timer is not None:
                self._timer.cancel()
            if self.transport is not None:
                self.transport.abort()
        self._timer = None


class Connection:
    """One Redis connection, made on first use and again on the first use after a loss."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._proto: _Protocol | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        #: the server's CLIENT ID of the current connection (None: not connected)
        self.client_id: int | None = None

    async def execute(self, packed: bytes, count: int, *, block: float = 0.0) -> list[Any]:
        """Send ``count`` packed commands in one write; their replies, error replies as
        exceptions in place. Raises ``redis.ConnectionError``/``TimeoutError`` when the
        connection is lost or a reply is later than the read deadline (plus ``block``)."""
        proto = self._proto
        if proto is None or proto.lost or proto.loop is not asyncio.get_running_loop():
            proto = await self._connected()
        return await proto.send(packed, count, block)

    @property
    def busy(self) -> bool:
        """Whether a call is waiting for its replies."""
        return self._proto is not None and bool(self._proto.pending)

    def send_nowait(self, packed: bytes, count: int) -> bool:
        """Send without waiting for the replies (read and dropped); False when not connected
        under the running loop."""
        proto = self._proto
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if proto is None or proto.lost or proto.loop is not running:
            return False
        proto.send(packed, count).add_done_callback(_retrieve)
        return True

    async def _connected(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            proto = self._proto
            if proto is None or proto.lost or proto.loop is not loop:
                self.close()
                self._proto = proto = await self._open(loop)
            return proto

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        ep = self.endpoint
        timeout = read_timeout(ep)
        proto = _Protocol(loop, ep.where, timeout)
        try:
            replies = await asyncio.wait_for(self._dial(loop, proto), ep.connect_timeout or timeout)
        except asyncio.TimeoutError as exc:
            proto.fail(rex.TimeoutError())
            raise rex.TimeoutError(f"Timeout connecting to {ep.where}") from exc
        except OSError as exc:
            proto.fail(rex.ConnectionError())
            raise rex.ConnectionError(f"Error connecting to {ep.where}: {exc}") from exc
        except BaseException:
            proto.fail(rex.ConnectionError())
            raise
        for reply in replies:
            if isinstance(reply, Exception):
                proto.fail(rex.ConnectionError())
                raise reply
        self.client_id = int(replies[-1])
        return proto

    async def _dial(self, loop: asyncio.AbstractEventLoop, proto: _Protocol) -> list[Any]:
        """Connect and send the handshake; its replies."""
        ep = self.endpoint
        if ep.path is not None:
            await loop.create_unix_connection(lambda: proto, ep.path)
        else:
            await loop.create_connection(lambda: proto, ep.host, ep.port)
            sock = proto.transport.get_extra_info("socket") if proto.transport else None
            if sock is not None:
                ep.set_keepalive(sock)
        commands = handshake(ep)
        return await proto.send(pack(commands), len(commands))

    def close(self) -> None:
        """Drop the connection; pending calls raise ``redis.ConnectionError``."""
        proto, self._proto, self.client_id = self._proto, None, None
        if proto is not None:
            proto.fail(rex.ConnectionError(f"Connection to {proto.where} closed"))


__all__ = ["Connection", "Endpoint", "pack"]
