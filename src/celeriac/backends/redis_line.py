"""One raw RESP3 connection a client thread waits for result keys on (``WatchLine``).

redis-py's ``PubSub`` and command path cost a client more CPU than the rest of a ``delay().get()``
round trip (a pool checkout, retry wrappers, hooks, a ``poll`` before every read, and the wait
needs a second connection for its ``GET``). A ``WatchLine`` is a ``RawConnection``
(``celeriac._internal.redis_raw``: a plain socket and a ``hiredis.Reader``) speaking RESP3,
where a subscribed connection may still run ``GET``:

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

Reads of a reply block for at most the client's ``socket_timeout`` (no ``poll`` per read); a
wait for a message is one ``poll`` with the wait's own timeout. Errors are ``RawConnection``'s
(the caller drops the line and its ``Link`` policy retries); a server without ``HELLO 3``
(Redis < 6) raises ``Unsupported`` and the caller uses ``PubSub`` instead.

Only where ``raw_spec`` allows (plain TCP and Unix sockets, a username/password or none); TLS,
Sentinel, credential providers and custom connection classes keep redis-py's ``PubSub``.
"""

from __future__ import annotations

import select
import time
from typing import Any

import redis

from celeriac._internal.redis_endpoint import Endpoint
from celeriac._internal.redis_raw import MORE, RawConnection, Unsupported, raw_spec

__all__ = ["Unsupported", "WatchLine", "raw_spec"]

#: ``_drain`` found no message on the channel
_NOTHING = object()
_FIRST_RECHECK = 0.05


class WatchLine(RawConnection):
    """One RESP3 connection a thread waits on (see the module docstring)."""

    def __init__(self, spec: Endpoint) -> None:
        super().__init__(spec)
        #: the channel this connection is subscribed to (None: none)
        self.channel: bytes | None = None
        self._poller = select.poll()
        self._poller.register(self.sock.fileno(), select.POLLIN)

    def _drain(self, channel: bytes) -> Any:
        """The data of the last complete message on ``channel`` in the reader (``_NOTHING``:
        none); every other push is skipped. Nothing but pushes is expected here."""
        reader, push = self.reader, self.push_type
        found: Any = _NOTHING
        while True:
            reply: Any = reader.gets()
            if reply is MORE:
                return found
            if type(reply) is not push:
                raise redis.ConnectionError(f"Unexpected reply from {self.spec.where}")
            if len(reply) == 3 and reply[0] == b"message" and reply[1] == channel:
                found = reply[2]

    def watch(
        self, channel: bytes, previous: bytes | None, deadline: float, recheck: float
    ) -> bytes | None:
        """The value of the key ``channel`` once it differs from ``previous``, or at
        ``deadline`` (monotonic); its reply is read even when ``deadline`` has passed."""
        get = self.pack(("GET", channel))
        if self.channel == channel:
            data = get
        else:
            data = self.pack(("SUBSCRIBE", channel)) + get
            if self.channel is not None:
                data = self.pack(("UNSUBSCRIBE", self.channel)) + data
            self.channel = channel
        self.send(data)
        value: bytes | None = self.reply()
        step = _FIRST_RECHECK
        while True:
            pushed = self._drain(channel)
            if pushed is not _NOTHING:
                value = pushed
            remaining = deadline - time.monotonic()
            if value != previous or remaining <= 0:
                return value
            if self._poller.poll(min(remaining, step) * 1000):
                self.fill()
            else:  # quiet: deletes and expiry publish nothing, read the key again
                step = min(step * 2, recheck)
                self.send(get)
                value = self.reply()
