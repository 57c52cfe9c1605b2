"""Fan-out (broadcast) on Redis pub/sub, as kombu does it (spec §3.5).

A message published to a fan-out exchange goes to every subscriber that is listening at that
moment; nothing is stored (a subscriber that is disconnected misses what is published meanwhile,
as with kombu). The drivers' ``publish_fanout(exchange, routing_key, message)`` PUBLISHes the
kombu envelope (``delivery_info`` = the exchange and routing key) on
``<global_keyprefix>/<db>.<exchange>[/<routing_key>]``; ``subscribe_fanout(exchange, pattern)``
PSUBSCRIBEs to ``/<db>.<exchange>[/<pattern with # as *>]`` - kombu's channel names, so Celery's
remote control (``/0.celery.pidbox``) and events (``/0.celeryev/<type>``) interoperate - and
returns one of the subscriptions below once Redis has confirmed the subscription (a message
published after ``subscribe_fanout`` returns is received).

A subscription yields ``RawMessage`` values (iterate, or ``get(timeout)`` for one);
undecodable payloads are logged and skipped. It reconnects on its own (redis-py subscribes
again on reconnect) under the driver's ``Link`` policy, and closes with ``close()`` or as a
context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from celeriac.exceptions import DecodeError, OperationalError
from celeriac.protocol.envelope import RawMessage, loads_envelope
from celeriac.transports.redis_client import RETRYABLE, Link

logger = logging.getLogger("celeriac.transports.redis")

#: how long ``subscribe_fanout`` waits for Redis to confirm the subscription
CONFIRM_SECONDS = 10.0
#: longest single wait of an iterating subscription (it loops)
ITER_WAIT = 1.0


def decode(message: dict[str, Any] | None) -> RawMessage | None:
    """The message of a pub/sub ``pmessage``/``message``; None for anything else."""
    if message is None or message.get("type") not in ("pmessage", "message"):
        return None
    try:
        return loads_envelope(message["data"]).message
    except DecodeError as exc:
        logger.warning("fan-out message on %r is not a kombu envelope: %s", message["channel"], exc)
        return None


def _confirmed(message: dict[str, Any] | None) -> bool:
    return message is not None and message.get("type") == "psubscribe"


class FanoutSubscription:
    """A sync subscription to a fan-out exchange (see the module docstring)."""

    def __init__(self, pubsub: Any, pattern: str, link: Link) -> None:
        self.pattern = pattern
        self._pubsub = pubsub
        self._link = link

    def confirm(self) -> None:
        """Wait until Redis confirms the PSUBSCRIBE (messages published after are received)."""
        deadline = time.monotonic() + CONFIRM_SECONDS
        while not _confirmed(self._pubsub.get_message(timeout=0.1)):
            if time.monotonic() > deadline:
                raise OperationalError(f"Redis did not confirm PSUBSCRIBE {self.pattern!r}")

    def get(self, timeout: float) -> RawMessage | None:
        """The next message, or None when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=max(remaining, 0.0)
                )
            except RETRYABLE as exc:
                delay = self._link.lost("subscribe", exc, time.monotonic())
                if remaining <= 0:
                    return None
                time.sleep(min(delay, remaining))
                continue
            self._link.ok(time.monotonic())
            raw = decode(message)
            if raw is not None:
                return raw
            if remaining <= 0:
                return None

    def __iter__(self) -> Iterator[RawMessage]:
        while True:
            raw = self.get(ITER_WAIT)
            if raw is not None:
                yield raw

    def close(self) -> None:
        with contextlib.suppress(*RETRYABLE):
            self._pubsub.close()

    def __enter__(self) -> FanoutSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFanoutSubscription:
    """The same on redis.asyncio: ``async for message in subscription`` or ``await get(t)``."""

    def __init__(self, pubsub: Any, pattern: str, link: Link) -> None:
        self.pattern = pattern
        self._pubsub = pubsub
        self._link = link

    async def confirm(self) -> None:
        """Wait until Redis confirms the PSUBSCRIBE (messages published after are received)."""
        deadline = time.monotonic() + CONFIRM_SECONDS
        while not _confirmed(await self._pubsub.get_message(timeout=0.1)):
            if time.monotonic() > deadline:
                raise OperationalError(f"Redis did not confirm PSUBSCRIBE {self.pattern!r}")

    async def get(self, timeout: float) -> RawMessage | None:
        """The next message, or None when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=max(remaining, 0.0)
                )
            except RETRYABLE as exc:
                delay = self._link.lost("subscribe", exc, time.monotonic())
                if remaining <= 0:
                    return None
                await asyncio.sleep(min(delay, remaining))
                continue
            self._link.ok(time.monotonic())
            raw = decode(message)
            if raw is not None:
                return raw
            if remaining <= 0:
                return None

    def __aiter__(self) -> AsyncIterator[RawMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RawMessage]:
        while True:
            raw = await self.get(ITER_WAIT)
            if raw is not None:
                yield raw

    async def close(self) -> None:
        with contextlib.suppress(*RETRYABLE):
            await self._pubsub.aclose()

    async def __aenter__(self) -> AsyncFanoutSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
