"""Waiting for a result key on Redis through one subscribed connection per thread (``Watcher``).

A ``Watcher`` keeps one subscribed connection per thread and per process (a forked child
makes its own: connections record the fork generation, ``celeriac._internal.forks``, so the
per-wait check costs no system call). A wait, in one round trip where it can:

1. subscribes to the key's channel, then reads the key: a write after that read is published
   on a channel already subscribed, so it is never missed (``SET`` and ``PUBLISH`` are one
   atomic step on the writer's side);
2. wakes on the key's message and takes the value from the message itself (the writer publishes
   exactly what it SET: no second read); a message of another channel (left over from an
   earlier wait) is skipped;
3. leaves the channel subscribed: the next wait unsubscribes it in the same write as its own
   subscription (off the path from the message to ``get()`` returning), or keeps it when it
   waits for the same key.

Two ways to hold the connection:

- ``WatchLine`` (``redis_line.py``), for plain TCP/Unix URLs with hiredis installed: a raw
  RESP3 socket where the subscribed connection runs the ``GET`` itself, so step 1 is one write
  (``UNSUBSCRIBE`` + ``SUBSCRIBE`` + ``GET``) and one reply, with no redis-py machinery.
- redis-py's ``PubSub`` otherwise (TLS, Sentinel, credential providers, no hiredis, a server
  without RESP3): ``SUBSCRIBE`` and its confirmation, then ``GET`` on the client's ordinary
  connection (RESP2 allows no ``GET`` on a subscribed connection).

Deletes and expiry publish nothing, so the key is also re-read with backoff (50 ms doubling up
to ``recheck`` seconds). The connection is read only inside a wait: no background thread. On any
error or interrupt the thread's connection is dropped (its state is unknown) and the error is
raised for the store's ``Link`` policy; the next wait makes a new one. A finished thread's
connection is closed with its thread-local storage; ``close`` closes every thread's.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any

import redis
from redis.client import PubSub

from celeriac._internal import forks
from celeriac._internal.redis_endpoint import Endpoint
from celeriac.backends.redis_line import Unsupported, WatchLine, raw_spec


def _as_bytes(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class Watcher:
    """Per-thread subscribed connections of one redis-py client (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, recheck: float = 1.0, raw: bool = True) -> None:
        self._client = client
        self.recheck = recheck
        #: how to open ``WatchLine``s; None: ``PubSub`` (not possible, not wanted, or refused)
        self.spec: Endpoint | None = raw_spec(client) if raw else None
        self._local = threading.local()
        self._lock = threading.Lock()
        #: every thread's connection, for ``close``; weak: a finished thread's connection is
        #: collected with its thread-local storage (and closes its socket)
        self._open: weakref.WeakSet[WatchLine | PubSub] = weakref.WeakSet()
        forks.watch_forks()

    def watch(self, full: str, previous: bytes | None, deadline: float) -> bytes | None:
        """The value of ``full`` once it differs from ``previous``, or at ``deadline``."""
        spec = self.spec
        if spec is not None:
            try:
                return self._watch_line(spec, full, previous, deadline)
            except Unsupported:
                self.spec = None  # the server has no RESP3: PubSub from now on
        return self._watch_pubsub(full, previous, deadline)

    def _keep(self, conn: WatchLine | PubSub) -> None:
        with self._lock:
            self._open.add(conn)

    # -- raw RESP3 line ------------------------------------------------------------------------
    def _watch_line(
        self, spec: Endpoint, full: str, previous: bytes | None, deadline: float
    ) -> bytes | None:
        local = self._local
        line: WatchLine | None = getattr(local, "line", None)
        if line is None or line.closed or line.generation != forks.generation():
            local.line = None
            line = local.line = WatchLine(spec)
            self._keep(line)
        done = False
        try:
            value = line.watch(full.encode(), previous, deadline, self.recheck)
            done = True
            return value
        finally:
            if not done:  # an error or an interrupt: the connection's state is unknown
                local.line = None
                with self._lock:
                    self._open.discard(line)
                line.close()

    # -- redis-py PubSub ------------------------------------------------------------------------
    def _pubsub(self) -> PubSub:
        local = self._local
        pubsub: PubSub | None = getattr(local, "pubsub", None)
        if pubsub is None or local.generation != forks.generation():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            local.pubsub, local.generation, local.left = pubsub, forks.generation(), None
            self._keep(pubsub)
        return pubsub

    def _drop_pubsub(self) -> None:
        pubsub: PubSub | None = getattr(self._local, "pubsub", None)
        self._local.pubsub = self._local.left = None
        if pubsub is not None:
            with self._lock:
                self._open.discard(pubsub)
            with contextlib.suppress(Exception):
                pubsub.close()

    def _watch_pubsub(self, full: str, previous: bytes | None, deadline: float) -> bytes | None:
        pubsub = self._pubsub()
        local = self._local
        channel = full.encode()
        done = False
        try:
            if local.left is not None:  # the last wait's channel: unsubscribed off its path
                pubsub.unsubscribe(local.left)  # type: ignore[no-untyped-call]
                local.left = None
            pubsub.subscribe(full)
            local.left = full
            self._confirmed(pubsub, channel, deadline)
            value = self._wait(pubsub, full, channel, previous, deadline)
            done = True
            return value
        finally:
            if not done:  # an error or an interrupt: the connection's state is unknown
                self._drop_pubsub()

    def _confirmed(self, pubsub: PubSub, channel: bytes, deadline: float) -> None:
        """Read until the subscription to ``channel`` is confirmed (or until ``deadline``)."""
        while True:
            remaining = deadline - time.monotonic()
            message = pubsub.get_message(timeout=max(0.0, min(remaining, self.recheck)))
            if message is None:
                if remaining <= 0:
                    return
                continue
            if message["type"] == "subscribe" and _as_bytes(message["channel"]) == channel:
                return

    def _wait(
        self, pubsub: PubSub, full: str, channel: bytes, previous: bytes | None, deadline: float
    ) -> bytes | None:
        value = _as_bytes(self._client.get(full))
        step = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if value != previous or remaining <= 0:
                return value
            message = pubsub.get_message(timeout=min(remaining, step))
            if message is None:
                step = min(step * 2, self.recheck)
                value = _as_bytes(self._client.get(full))
            elif message["type"] == "message" and _as_bytes(message["channel"]) == channel:
                value = _as_bytes(message["data"])

    def close(self) -> None:
        """Close every thread's subscribed connection."""
        with self._lock:
            conns = list(self._open)
            self._open.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
