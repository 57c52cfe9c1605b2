"""One Redis connection kept for single commands, off redis-py's per-command machinery.

A redis-py ``execute_command`` checks a connection out of the pool, wraps the call in its retry
policy and observability hooks and checks the connection back in: about 20 us of CPU per command
on this project's machines, a third of what a single ``LPUSH`` costs its caller in all.
``PinnedConnection.execute`` sends the command on a connection it keeps, and reads the reply.

- Threads: the connection is used by one caller at a time; a caller that finds it busy uses the
  client's pool as before (``execute_command``). So nothing is kept per thread (a program that
  starts a thread per request leaks nothing) and concurrent callers never wait for each other.
- A connection that fails (reset, refused, timed out) is dropped and the command tried once more
  on a fresh one at once, as redis-py's own retry does (a server restart leaves the kept
  connection stale); a second failure is raised for the caller's ``Link`` policy to handle. A
  command whose reply was lost may have run: the caller's at-least-once rule applies.
- Any other interruption (an exception from the parser, KeyboardInterrupt mid-reply) drops the
  connection, so a half-read reply never answers the next command.
- After a fork the child makes its own connection (the parent's is never touched).
- Not used (``enabled=False``) when the user sets ``max_connections``: a kept connection would
  hold one of a few (redis-py's own default, 100 in redis-py 8, leaves room).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

from celeriac._internal.redis_link import RETRYABLE


class PinnedConnection:
    """``execute(*args)``: ``client.execute_command(*args)`` on a kept connection."""

    def __init__(self, client: redis.Redis, *, enabled: bool = True) -> None:
        self._client = client
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conn: Any = None
        #: False: every command goes through the pool (``max_connections`` set by the user)
        self._enabled = enabled

    def execute(self, *args: Any) -> Any:
        if self._pid != os.getpid():
            self._forked()
        if not self._enabled or not self._lock.acquire(blocking=False):
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        try:
            if self._conn is None:
                self._conn = self._client.connection_pool.get_connection()
            try:
                return self._once(args)
            except RETRYABLE:
                return self._once(args)
        finally:
            self._lock.release()

    def _once(self, args: tuple[Any, ...]) -> Any:
        conn = self._conn
        try:
            conn.send_packed_command(conn.pack_command(*args))
            return conn.read_response()
        except redis.ResponseError:
            raise  # the whole reply was read: the connection is in step
        except BaseException:
            conn.disconnect()  # reconnects on its next command
            raise

    def _forked(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conn = None

    def close(self) -> None:
        """Give the connection back to the pool (the client's ``close`` disconnects it).

        Never waits for the lock: one held at a fork, or leaked by an interrupt between its
        acquire and its ``try``, would block forever. A command in flight in another thread
        uses its connection to the end; the client's ``close`` disconnects it with the rest."""
        if self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            self._conn = None
            return
        try:
            conn, self._conn = self._conn, None
        finally:
            self._lock.release()
        if conn is not None:
            self._client.connection_pool.release(conn)
