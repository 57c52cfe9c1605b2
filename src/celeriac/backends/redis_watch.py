"""Waiting for a result key on Redis through one subscribed connection per thread (``Watcher``).

``RedisStore.wait_for_change`` used to open (and close) a pub/sub connection per call: a TCP
connect and a ``HELLO`` per ``get()``. A ``Watcher`` keeps one ``PubSub`` per thread (and per
process: a forked child makes its own) and, per wait:

1. ``SUBSCRIBE <key>`` and read its confirmation (the subscription is live on the server);
2. ``GET <key>`` on the ordinary connection: a write after this read is published on a channel
   already subscribed, so it is never missed;
3. wake on the key's message and take the value from the message itself (the writer publishes
   exactly what it SET: no second GET); a message of another channel (left over from an earlier
   wait) is skipped;
4. ``UNSUBSCRIBE <key>``, sent by the next wait before its own SUBSCRIBE (off the path from
   the message to ``get()`` returning; its confirmation and any later message of that key are
   skipped: everything before the next SUBSCRIBE's confirmation is).

Deletes and expiry publish nothing, so the key is also re-read with backoff (50 ms doubling up
to ``recheck`` seconds). The connection is read only inside a wait: no background thread. On any
error the thread's ``PubSub`` is dropped and the next wait makes a new one; a finished thread's
connection is closed with its thread-local storage.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import Any

import redis
from redis.client import PubSub


def _as_bytes(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class Watcher:
    """Per-thread subscribed connections of one redis-py client (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, recheck: float = 1.0) -> None:
        self._client = client
        self.recheck = recheck
        self._local = threading.local()
        self._lock = threading.Lock()
        #: every thread's PubSub, for ``close``; weak: a finished thread's PubSub is collected
        #: with its thread-local storage (redis-py then disconnects it)
        self._open: weakref.WeakSet[PubSub] = weakref.WeakSet()

    def _pubsub(self) -> PubSub:
        local = self._local
        pubsub: PubSub | None = getattr(local, "pubsub", None)
        if pubsub is None or local.pid != os.getpid():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            local.pubsub, local.pid, local.left = pubsub, os.getpid(), None
            with self._lock:
                self._open.add(pubsub)
        return pubsub

    def _drop(self) -> None:
        pubsub: PubSub | None = getattr(self._local, "pubsub", None)
        self._local.pubsub = self._local.left = None
        if pubsub is not None:
            with self._lock:
                self._open.discard(pubsub)
            with contextlib.suppress(Exception):
                pubsub.close()

    def watch(self, full: str, previous: bytes | None, deadline: float) -> bytes | None:
        """The value of ``full`` once it differs from ``previous``, or at ``deadline``."""
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
                self._drop()

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
            pubsubs = list(self._open)
            self._open.clear()
        for pubsub in pubsubs:
            with contextlib.suppress(Exception):
                pubsub.close()
