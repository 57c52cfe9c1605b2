"""A raw RESP3 connection to Redis for the client's hot paths (``RawConnection``).

redis-py's per-command path (pool checkout, retry wrapper, hooks, its encoder and parser
layers) and its sockets in timeout mode (a ``poll`` before every send and every read) cost a
client more CPU than the command itself. A ``RawConnection`` is a plain blocking socket and a
``hiredis.Reader``: one ``sendto`` per write and one ``recvfrom`` per read, the client's
``socket_timeout`` enforced by the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``).

- ``raw_spec(client)`` says where and how to connect: the ``Endpoint`` (``redis_endpoint``) of
  a redis-py client's pool, plain TCP and Unix sockets with at most a username and password,
  on POSIX. TLS, Sentinel, credential providers, custom connection classes, or no hiredis with
  RESP3 pushes: None, and the caller keeps redis-py.
- The handshake is one write: ``HELLO 3 [AUTH user pass] [SETNAME name]`` and ``SELECT db``.
  RESP3 lets a subscribed connection still run commands (``backends/redis_line.py``). A server
  that refuses ``HELLO 3`` (Redis < 6) raises ``Unsupported``: the caller falls back for good.
- Errors are redis-py's: socket errors as ``redis.ConnectionError``/``redis.TimeoutError`` (the
  caller closes the connection; its ``Link`` policy retries), error replies as redis-py names
  them (``LOADING`` is ``BusyLoadingError``, retried like a lost connection; ``WRONGPASS`` an
  ``AuthenticationError``, never retried; the rest ``ResponseError`` and its subclasses).
- ``generation`` is the fork generation it was opened in (``forks``): a forked child never
  writes to its parent's socket; ``close`` in a child only closes the child's descriptor.

One thread at a time: callers hold one per thread, or behind a lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Any

import redis
from redis import exceptions as rexc

from celeriac._internal import forks
from celeriac._internal.redis_endpoint import Endpoint
from celeriac._internal.redis_errors import error_of
from celeriac._internal.resp import pack_command

#: returned by the reader when a reply is incomplete (RESP3 also has a false boolean)
MORE = object()
_READ_SIZE = 65536


class Unsupported(redis.RedisError):
    """The server refused ``HELLO 3`` (Redis < 6): use redis-py instead."""


def raw_spec(client: redis.Redis) -> Endpoint | None:
    """Where to open ``RawConnection``s to ``client``'s server, or None (see the module doc)."""
    if os.name != "posix":  # SO_RCVTIMEO's timeval and select.poll as used here
        return None
    try:
        import hiredis
    except ImportError:
        return None
    if not hasattr(hiredis, "PushNotification"):
        return None
    return Endpoint.from_client(client)


def _connect(spec: Endpoint) -> socket.socket:
    if spec.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(spec.connect_timeout)
            sock.connect(spec.path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((spec.host, spec.port), spec.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            spec.set_keepalive(sock)
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


class RawConnection:
    """One connected, authenticated RESP3 socket (see the module docstring)."""

    def __init__(self, spec: Endpoint) -> None:
        import hiredis

        self.spec = spec
        self.generation = forks.generation()
        self.closed = False
        #: ``resp.pack_command``: a tuple of str/bytes/int/float -> one command's bytes
        self.pack: Any = pack_command
        self.push_type: Any = hiredis.PushNotification
        self.reader = hiredis.Reader(replyError=error_of, notEnoughData=MORE)
        try:
            self.sock = _connect(spec)
        except OSError as exc:
            self.closed = True
            raise redis.ConnectionError(f"Error connecting to {spec.where}: {exc}") from exc
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
        data = self.pack(tuple(hello))
        if spec.db:
            data += self.pack(("SELECT", spec.db))
        self.send(data)
        try:
            self.reply()
        except (rexc.BusyLoadingError, rexc.AuthenticationError):
            raise
        except redis.ResponseError as exc:
            raise Unsupported(f"HELLO 3 refused by {spec.where}: {exc}") from exc
        if spec.db:
            self.reply()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except BlockingIOError as exc:
            raise redis.TimeoutError(f"Timeout writing to {self.spec.where}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error writing to {self.spec.where}: {exc}") from exc

    def fill(self) -> None:
        """Read what the socket holds (blocking up to ``socket_timeout``) into the reader."""
        try:
            data = self.sock.recv(_READ_SIZE)
        except BlockingIOError as exc:
            raise redis.TimeoutError(f"Timeout reading from {self.spec.where}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error reading from {self.spec.where}: {exc}") from exc
        if not data:
            raise redis.ConnectionError(f"Connection closed by {self.spec.where}")
        self.reader.feed(data)

    def reply(self) -> Any:
        """The next reply that is not a push (pushes before it are skipped); an error reply is
        raised."""
        reader, push = self.reader, self.push_type
        while True:
            reply = reader.gets()
            if reply is MORE:
                self.fill()
            elif type(reply) is not push:
                if isinstance(reply, redis.RedisError):
                    raise reply
                return reply

    def command(self, *args: Any) -> Any:
        """Send one command and return its reply."""
        self.send(self.pack(args))
        return self.reply()

    def close(self) -> None:
        """Close the socket (in a forked child: only this process's descriptor). Idempotent."""
        self.closed = True
        sock = getattr(self, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
