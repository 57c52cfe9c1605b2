"""The transport contract: a small set of broker primitives every driver implements.

A transport moves ``RawMessage`` values between named queues. Its guarantees, which every driver
must meet (the contract suite checks them):

- **publish**: ``publish(queue, message, eta=None)``. With ``eta`` (Unix time) in the future the
  message is *delayed*: kept in the broker and not handed out before ``eta``. Priority comes from
  ``message.priority`` (Celery's 0-9; on every broker but AMQP a *lower* number is served first,
  as Celery does on Redis; equal priorities are FIFO).
- **fetch**: ``fetch(queues, limit, timeout)`` returns up to ``limit`` ready messages, waiting up
  to ``timeout`` seconds for the first (never busy-looping). Each returned ``Delivery`` is leased
  to this consumer for ``lease_seconds``: nobody else gets it while the lease holds. Every fetch
  increments the message's ``delivery_count`` (1 on first delivery). Queues are served in the
  order given, round-robin between calls is allowed.
- **renew**: extends the leases of held deliveries (the worker's heartbeat calls it). A message
  whose lease ran out (its consumer died) becomes ready again, with ``redelivered=True``.
- **ack**: removes held messages for good. Acking an unknown tag, or one whose lease ran out and
  was taken back by a fetch, is a no-op.
- **requeue**: gives held messages back at once (warm shutdown, ``Reject(requeue=True)``); the
  delivery counter is restored, since the message was not attempted; the next delivery has
  ``redelivered=True``.
- **defer**: atomically turns a held message into a delayed one due at ``eta`` (a message that
  arrived early, e.g. from a Celery client that put an ETA task on the plain queue); the delivery
  counter is restored, as by ``requeue``.
- **dead_letter**: atomically removes a held message and stores it in the dead-letter store with a
  one-line reason; ``dead_letters``/``requeue_dead_letters``/``purge_dead_letters`` manage them.
  A requeued dead letter starts afresh (its next delivery has ``delivery_count`` 1).
- **qsize** (ready + delayed + held messages of a queue), **purge** (ready and delayed; returns
  how many), **queues** (names that hold anything).

Methods are synchronous; a driver may block (network, SQLite). ``AsyncTransport`` is the same
contract for the worker's event loop; ``ThreadedAsyncTransport`` adapts a synchronous driver by
running its calls on dedicated I/O threads (one for the blocking ``fetch``, one for the rest), and
drivers with native async clients (Redis) implement ``AsyncTransport`` directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from celeriac.protocol.envelope import RawMessage

if TYPE_CHECKING:
    from celeriac.protocol.envelope_template import EnvelopeTemplate

DEFAULT_LEASE_SECONDS = 60.0


@dataclass(slots=True)
class Delivery:
    """A message handed to a consumer, held under lease until acked/requeued/dead-lettered."""

    tag: str
    queue: str
    message: RawMessage
    delivery_count: int = 1
    redelivered: bool = False
    #: driver-private bookkeeping (row id, raw bytes, ...)
    handle: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the dead-letter store."""

    id: str
    queue: str
    reason: str
    message: RawMessage
    failed_at: float  # Unix time
    delivery_count: int = 0


class Publisher(Protocol):
    """Sends messages that differ from one prototype only in an ``EnvelopeTemplate``'s fields
    (a task's calls with the same options): ``template.render(...)`` gives a payload and
    ``send`` publishes it; immediate messages only (no ``eta``). ``send_many`` publishes, in
    order and in one round trip, ``Rendered`` payloads of any publisher of the same transport
    mixed with plain ``(queue, message, eta)`` items (a group whose members are of several
    tasks). Raises what ``publish`` raises."""

    template: EnvelopeTemplate

    def send(self, payload: bytes) -> None: ...

    def send_many(
        self, items: Sequence[Rendered | tuple[str, RawMessage, float | None]]
    ) -> None: ...


class Rendered:
    """A payload rendered by a ``Publisher``'s template, waiting to be sent (``send_many``)."""

    __slots__ = ("payload", "publisher")

    def __init__(self, publisher: Publisher, payload: bytes) -> None:
        self.publisher = publisher
        self.payload = payload


class Transport(ABC):
    """Synchronous broker driver (clients, CLI, and the worker through an adapter)."""

    #: URL scheme(s) this driver serves, e.g. ("sqlite",)
    schemes: tuple[str, ...] = ()

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.lease_seconds = lease_seconds
        self.options: dict[str, Any] = dict(options or {})

    # -- producer side -----------------------------------------------------------------------
    @abstractmethod
    def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None: ...

    def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        """Publish several messages; drivers override this to use one round trip."""
        for queue, message, eta in items:
            self.publish(queue, message, eta=eta)

    def publisher(
        self, queue: str, prototype: RawMessage, *, root_is_id: bool = True
    ) -> Publisher | None:
        """A faster way to send messages like ``prototype`` to ``queue`` (see ``Publisher``;
        ``root_is_id`` as ``EnvelopeTemplate.build`` has it), or None (the default): such a
        driver has only ``publish``. May raise what ``publish`` raises (it may declare the
        queue)."""
        return None

    # -- consumer side -----------------------------------------------------------------------
    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]: ...

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    @abstractmethod
    def requeue(self, deliveries: Sequence[Delivery]) -> None: ...

    @abstractmethod
    def defer(self, delivery: Delivery, eta: float) -> None: ...

    @abstractmethod
    def renew(self, deliveries: Sequence[Delivery]) -> None: ...

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    # -- management --------------------------------------------------------------------------
    @abstractmethod
    def qsize(self, queue: str) -> int: ...

    @abstractmethod
    def purge(self, queue: str) -> int: ...

    @abstractmethod
    def queues(self) -> list[str]: ...

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    @abstractmethod
    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters (all when ``ids`` is None) back on their queues; returns the count."""

    @abstractmethod
    def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int: ...

    def wake(self) -> None:  # noqa: B027 - optional hook
        """Interrupt a ``fetch`` blocked in another thread (used at shutdown). Optional."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections/files. Idempotent."""

    def describe(self) -> str:
        """The URL with any password hidden (for banners and logs)."""
        from celeriac._internal.urls import redact_url

        return redact_url(self.url)


class AsyncTransport(ABC):
    """The same contract for the worker's event loop."""

    url: str
    lease_seconds: float

    @abstractmethod
    async def publish(
        self, queue: str, message: RawMessage, *, eta: float | None = None
    ) -> None: ...

    @abstractmethod
    async def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None: ...

    @abstractmethod
    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]: ...

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    @abstractmethod
    async def requeue(self, deliveries: Sequence[Delivery]) -> None: ...

    @abstractmethod
    async def defer(self, delivery: Delivery, eta: float) -> None: ...

    @abstractmethod
    async def renew(self, deliveries: Sequence[Delivery]) -> None: ...

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    @abstractmethod
    async def qsize(self, queue: str) -> int: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def describe(self) -> str: ...

    def wake(self) -> None:  # noqa: B027 - optional hook
        """Interrupt a blocked ``fetch`` (shutdown). Native async drivers may rely on the
        caller cancelling the fetch instead; this default does nothing."""


class ThreadedAsyncTransport(AsyncTransport):
    """Runs a synchronous driver's calls on two I/O threads: one for ``fetch``, one for the rest.

    ``fetch`` blocks for up to its timeout; keeping it on its own thread means acks and publishes
    never wait behind it.
    """

    def __init__(self, sync: Transport) -> None:
        self.sync = sync
        self.url = sync.url
        self.lease_seconds = sync.lease_seconds
        self._fetch_pool = concurrent.futures.ThreadPoolExecutor(1, "celeriac-fetch")
        self._io_pool = concurrent.futures.ThreadPoolExecutor(1, "celeriac-io")

    async def _io(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_pool, lambda: func(*args, **kwargs))

    async def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        await self._io(self.sync.publish, queue, message, eta=eta)

    async def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        if items:
            await self._io(self.sync.publish_many, list(items))

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        result: list[Delivery] = await loop.run_in_executor(
            self._fetch_pool, self.sync.fetch, list(queues), limit, timeout
        )
        return result

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._io(self.sync.ack, list(deliveries))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._io(self.sync.requeue, list(deliveries))

    async def defer(self, delivery: Delivery, eta: float) -> None:
        await self._io(self.sync.defer, delivery, eta)

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._io(self.sync.renew, list(deliveries))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._io(self.sync.dead_letter, delivery, reason)

    async def qsize(self, queue: str) -> int:
        result: int = await self._io(self.sync.qsize, queue)
        return result

    async def close(self) -> None:
        """Interrupt a blocked fetch, then wait for the I/O threads off the event loop."""
        self.sync.wake()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._fetch_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)
        self.sync.close()

    def describe(self) -> str:
        return self.sync.describe()

    def wake(self) -> None:
        self.sync.wake()
