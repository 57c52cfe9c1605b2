"""One Redis connection kept for single commands, off redis-py's per-command machinery.

A redis-py ``execute_command`` checks a connection out of the pool, wraps the call in its retry
policy and observability hooks and checks the connection back in: about 20 us of CPU per command
on this project's machines, a third of what a single ``LPUSH`` costs its caller in all.
``PinnedConnection.execute`` sends the command on a connection it keeps, and reads the reply.

- Where the URL allows (``redis_raw.raw_spec``: plain TCP/Unix, a username/password or none)
  the kept connection is a ``RawConnection``: the command packed by ``resp``, one ``sendto`` and
  one ``recvfrom`` (redis-py's socket in timeout mode adds a ``poll`` to each, and its encoder
  and parser layers ~10 us). Otherwise (TLS, Sentinel, ...) or on a server without RESP3 it is
  a connection of the client's pool, used directly.
- ``execute_many`` sends several commands in one write (a bulk publish), packed by ``resp``
  (hiredis is ten times slower on a long ``LPUSH``), and returns their replies in order;
  ``execute`` is the same exchange with one command (one path for both, ``_exchange_kept``).
- Threads: the connection is used by one caller at a time; a caller that finds it busy uses the
  client's pool as before (``execute_command``; ``execute_many``: a pool connection). So
  nothing is kept per thread (a program that starts a thread per request leaks nothing) and
  concurrent callers never wait for each other.
- A connection that fails (reset, refused, timed out) is dropped and the command tried once more
  on a fresh one at once, as redis-py's own retry does (a server restart leaves the kept
  connection stale); a second failure is raised for the caller's ``Link`` policy to handle. A
  command whose reply was lost may have run: the caller's at-least-once rule applies.
- Any other interruption (an exception from the parser, KeyboardInterrupt mid-reply) drops the
  connection, so a half-read reply never answers the next command.
- After a fork the child makes its own connection (the parent's is never touched); the check is
  the fork generation (``forks``), not a ``getpid`` system call per command.
- Not used (``enabled=False``) when the user sets ``max_connections``: a kept connection would
  hold one of a few (redis-py's own default, 100 in redis-py 8, leaves room).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis

from celeriac._internal import forks
from celeriac._internal.redis_link import RETRYABLE
from celeriac._internal.redis_raw import RawConnection, Unsupported, raw_spec
from celeriac._internal.resp import pack, pack_command


class PinnedConnection:
    """``execute(*args)``: ``client.execute_command(*args)`` on a kept connection."""

    def __init__(self, client: redis.Redis, *, enabled: bool = True, raw: bool = True) -> None:
        self._client = client
        forks.watch_forks()
        self._generation = forks.generation()
        self._lock = threading.Lock()
        #: a ``RawConnection`` (``_spec`` set) or a connection of the client's pool
        self._conn: Any = None
        #: False: every command goes through the pool (``max_connections`` set by the user)
        self._enabled = enabled
        #: how to open a ``RawConnection``; None: a connection of the pool
        self._spec = raw_spec(client) if enabled and raw else None

    def execute(self, *args: Any) -> Any:
        if self._generation != forks.generation():
            self._forked()
        if not self._enabled or not self._lock.acquire(blocking=False):
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        try:
            reply = self._kept(pack_command(args), 1)[0]
        finally:
            self._lock.release()
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of ``commands``, sent in one write (packed by ``resp.pack``: a long
        ``LPUSH`` costs hiredis ten times more), in order; an error reply stands in its place
        as the redis-py exception. A busy kept connection: a connection of the pool."""
        if self._generation != forks.generation():
            self._forked()
        packed = pack(commands)
        if not self._enabled or not self._lock.acquire(blocking=False):
            return self._on_pool(packed, len(commands))
        try:
            return self._kept(packed, len(commands))
        finally:
            self._lock.release()

    def _on_pool(self, packed: bytes, count: int) -> list[Any]:
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            return _exchange(conn, packed, count)
        finally:
            pool.release(conn)

    def _kept(self, packed: bytes, count: int) -> list[Any]:
        """``_exchange_kept``, tried once more at once on a fresh connection when the kept one
        failed (as redis-py's own retry: a server restart leaves it stale)."""
        try:
            return self._exchange_kept(packed, count)
        except RETRYABLE:
            return self._exchange_kept(packed, count)

    def _exchange_kept(self, packed: bytes, count: int) -> list[Any]:
        """Send ``packed`` on the kept connection (opened if need be) and read ``count``
        replies; a failure drops the connection, so a half-read reply never answers the next
        command."""
        conn = self._raw_connection() if self._spec is not None else None
        if conn is None:
            kept = self._conn
            if kept is None:
                kept = self._conn = self._client.connection_pool.get_connection()
            return _exchange(kept, packed, count)  # (disconnects it on a failure)
        try:
            conn.send(packed)
            return _replies(conn.reply, count)
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def _raw_connection(self) -> RawConnection | None:
        """The kept raw connection, opened if need be; None once the server refused RESP3
        (``_spec`` is then None: the pool's connections from now on)."""
        conn: RawConnection | None = self._conn
        if conn is None or conn.closed:
            assert self._spec is not None
            try:
                conn = self._conn = RawConnection(self._spec)
            except Unsupported:
                self._spec = self._conn = None
                return None
        return conn

    def _forked(self) -> None:
        self._generation = forks.generation()
        self._lock = threading.Lock()
        self._conn = None

    def close(self) -> None:
        """Close the raw connection, or give the pool's back (the client's ``close``
        disconnects it).

        Never waits for the lock: one held at a fork, or leaked by an interrupt between its
        acquire and its ``try``, would block forever. A command in flight in another thread
        uses its connection to the end; the client's ``close`` disconnects a pool's connection
        with the rest, and a raw one closes its socket when it is collected."""
        if self._generation != forks.generation() or not self._lock.acquire(blocking=False):
            self._conn = None
            return
        try:
            conn, self._conn = self._conn, None
        finally:
            self._lock.release()
        if isinstance(conn, RawConnection):
            conn.close()
        elif conn is not None:
            self._client.connection_pool.release(conn)


def _replies(read: Callable[[], Any], count: int) -> list[Any]:
    """``count`` replies from ``read``; an error reply (raised by ``read`` once the whole reply
    is read) in its place, so the connection stays in step."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(read())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def _exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
    """Send ``packed`` (``count`` commands) on a redis-py connection and read the replies;
    the connection is disconnected on a failure (it reconnects on its next command)."""
    try:
        conn.send_packed_command([packed])
        return _replies(conn.read_response, count)
    except BaseException:
        conn.disconnect()
        raise
