"""The in-process broker: ``memory://`` (tests, eager-ish local runs, the ``testing`` plugin).

URL
    ``memory://`` (the process's default broker) or ``memory://<name>``. Every transport opened
    with the same name in one process shares one broker, whichever thread uses it (the client
    thread publishes while the worker's I/O threads fetch and ack). Leading/trailing ``/`` and a
    query string are ignored (``memory://x/`` is ``memory://x``). Nothing crosses a process
    boundary, and the state lives as long as the process (``reset_brokers`` drops it).

Options
    None beyond the constructor's ``lease_seconds`` (the app maps ``visibility_timeout`` to it).

Layout (one ``_Broker`` per name, every field guarded by the broker's ``threading.Condition``)
    - ``ready``: per queue, a heap of ``(priority, seq, entry)``: lower priority first, FIFO
      within a priority (``seq`` is a per-broker publish counter). A message given back
      (requeue, expired lease) keeps its ``seq``, so it returns to its place in the line.
    - ``delayed``: one heap of ``(eta, seq, queue, entry)``; ``eta`` is Unix time.
    - ``held``: delivery tag -> lease (queue, entry, monotonic deadline), plus a heap of lease
      deadlines (stale heap rows are skipped lazily and compacted when they pile up).
    - ``dead``: insertion-ordered dict of ``DeadLetter`` by id.
    Messages are stored as the ``RawMessage`` objects given, never copied or serialised.

Guarantees (the contract of ``transports.base``)
    - ``fetch`` blocks on the condition, never busy-loops: it wakes on a publish/requeue/defer,
      on ``wake()``/``close()``, and when the earliest delayed message falls due or the earliest
      lease runs out. Each fetch first moves due delayed messages to their ready queue and puts
      every expired lease back (``redelivered=True``), whatever queues it asks for.
    - A lease that ran out is only taken back by the next fetch; until then its holder's
      ``ack``/``renew``/``requeue``/``defer``/``dead_letter`` still apply (no needless duplicate).
      After it was taken back, the old tag is unknown and those calls are no-ops.
    - ``delivery_count`` is incremented by every delivery; ``requeue`` and ``defer`` restore it
      (the message was not attempted). ``requeue`` marks the message ``redelivered``.
    - A dead letter put back with ``requeue_dead_letters`` starts afresh (count 0, not
      redelivered); its reason is kept on one line.
    - After ``close()`` a ``fetch`` on that transport returns ``[]`` at once (the broker and its
      other transports carry on); ``close`` is idempotent.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac._internal.named import Named, memory_name
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import (
    DEFAULT_LEASE_SECONDS,
    DeadLetter,
    Delivery,
    Transport,
)

__all__ = ["MemoryTransport", "broker_name", "reset_brokers"]

#: rebuild the lease heap when it holds this many more rows than there are leases
_COMPACT_SLACK = 1024


@dataclass(slots=True)
class _Entry:
    """One message as the broker keeps it, across its deliveries."""

    message: RawMessage
    seq: int
    delivery_count: int = 0
    redelivered: bool = False


@dataclass(slots=True)
class _Lease:
    queue: str
    entry: _Entry
    deadline: float  # time.monotonic()


@dataclass(slots=True)
class _Broker:
    """The state of one named broker. Every method expects ``cond`` to be held."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: dict[str, list[tuple[int, int, _Entry]]] = field(default_factory=dict)
    delayed: list[tuple[float, int, str, _Entry]] = field(default_factory=list)
    held: dict[str, _Lease] = field(default_factory=dict)
    lease_heap: list[tuple[float, str]] = field(default_factory=list)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def new_entry(self, message: RawMessage) -> _Entry:
        return _Entry(message, next(self.counter))

    def push_ready(self, queue: str, entry: _Entry) -> None:
        heapq.heappush(self.ready.setdefault(queue, []), (entry.message.priority, entry.seq, entry))

    def push(self, queue: str, entry: _Entry, eta: float | None) -> None:
        if eta is not None and eta > time.time():
            heapq.heappush(self.delayed, (eta, entry.seq, queue, entry))
        else:
            self.push_ready(queue, entry)

    def promote(self) -> None:
        """Move due delayed messages to ready, and put expired leases back (redelivered)."""
        now = time.time()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, queue, entry = heapq.heappop(self.delayed)
            self.push_ready(queue, entry)
        mono = time.monotonic()
        while self.lease_heap and self.lease_heap[0][0] <= mono:
            deadline, tag = heapq.heappop(self.lease_heap)
            lease = self.held.get(tag)
            if lease is None or lease.deadline != deadline:
                continue  # acked, given back or renewed since this row was pushed
            del self.held[tag]
            lease.entry.redelivered = True
            self.push_ready(lease.queue, lease.entry)

    def take(self, queues: Sequence[str], limit: int, lease_seconds: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, queues served in the order given."""
        out: list[Delivery] = []
        deadline = time.monotonic() + lease_seconds
        for queue in queues:
            heap = self.ready.get(queue)
            while heap and len(out) < limit:
                _, _, entry = heapq.heappop(heap)
                entry.delivery_count += 1
                tag = uuid.uuid4().hex
                self.held[tag] = _Lease(queue, entry, deadline)
                heapq.heappush(self.lease_heap, (deadline, tag))
                out.append(
                    Delivery(tag, queue, entry.message, entry.delivery_count, entry.redelivered)
                )
            if heap is not None and not heap:
                del self.ready[queue]
        return out

    def next_event(self) -> float | None:
        """Seconds until a delayed message falls due or a lease runs out (None: nothing pending)."""
        waits: list[float] = []
        if self.delayed:
            waits.append(self.delayed[0][0] - time.time())
        if self.lease_heap:
            waits.append(self.lease_heap[0][0] - time.monotonic())
        return max(0.0, min(waits)) if waits else None

    def release(self, tag: str) -> _Lease | None:
        """Drop the lease ``tag`` (None when unknown or already taken back)."""
        lease = self.held.pop(tag, None)
        self.compact()
        return lease

    def extend(self, tag: str, deadline: float) -> None:
        """Move the lease ``tag`` (if still held) to end at ``deadline``."""
        lease = self.held.get(tag)
        if lease is not None:
            lease.deadline = deadline
            heapq.heappush(self.lease_heap, (deadline, tag))
            self.compact()

    def compact(self) -> None:
        """Drop stale lease-heap rows once they outnumber the live ones by far."""
        if len(self.lease_heap) > 2 * len(self.held) + _COMPACT_SLACK:
            self.lease_heap = [(held.deadline, t) for t, held in self.held.items()]
            heapq.heapify(self.lease_heap)

    def give_back(self, tag: str) -> _Lease | None:
        """Release ``tag`` and undo its delivery count (the message was not attempted)."""
        lease = self.release(tag)
        if lease is not None:
            lease.entry.delivery_count = max(0, lease.entry.delivery_count - 1)
        return lease

    def count(self, queue: str) -> int:
        held = sum(1 for lease in self.held.values() if lease.queue == queue)
        delayed = sum(1 for row in self.delayed if row[2] == queue)
        return len(self.ready.get(queue, ())) + delayed + held

    def purge(self, queue: str) -> int:
        removed = len(self.ready.pop(queue, ()))
        kept = [row for row in self.delayed if row[2] != queue]
        removed += len(self.delayed) - len(kept)
        heapq.heapify(kept)
        self.delayed = kept
        return removed

    def queue_names(self) -> list[str]:
        names = {name for name, heap in self.ready.items() if heap}
        names.update(row[2] for row in self.delayed)
        names.update(lease.queue for lease in self.held.values())
        return sorted(names)

    def pick_dead(self, ids: Sequence[str] | None) -> list[DeadLetter]:
        """Remove and return the dead letters named by ``ids`` (all when None)."""
        wanted: Iterable[str] = list(self.dead) if ids is None else dict.fromkeys(ids)
        return [self.dead.pop(i) for i in wanted if i in self.dead]


_BROKERS = Named(_Broker)


def broker_name(url: str) -> str:
    """The broker name in a ``memory://`` URL (``""`` is the process's default broker)."""
    return memory_name(url)


def _broker(name: str) -> _Broker:
    return _BROKERS.get(name)


def reset_brokers(name: str | None = None) -> None:
    """Forget the named broker's state (every broker when ``name`` is None).

    Drivers already open on it keep the old state; open new ones after a reset.
    """
    _BROKERS.reset(name)


def _one_line(reason: str) -> str:
    return " ".join(part.strip() for part in reason.splitlines() if part.strip())


class MemoryTransport(Transport):
    """A broker living in this process's memory, shared by every transport of the same name."""

    schemes = ("memory",)

    def __init__(
        self,
        url: str = "memory://",
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(url, lease_seconds=lease_seconds, options=options)
        self.name = broker_name(url)
        self._broker = _broker(self.name)
        self._wakes = 0  # bumped by wake(); guarded by the broker's condition
        self._closed = False

    # -- producer side -----------------------------------------------------------------------
    def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        self.publish_many([(queue, message, eta)])

    def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        if not items:
            return
        broker = self._broker
        with broker.cond:
            for queue, message, eta in items:
                broker.push(queue, broker.new_entry(message), eta)
            broker.cond.notify_all()

    # -- consumer side -----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(queues)
        deadline = time.monotonic() + max(0.0, timeout)
        broker = self._broker
        with broker.cond:
            wakes = self._wakes
            while not self._closed:
                broker.promote()
                got = broker.take(queues, limit, self.lease_seconds)
                if got or self._wakes != wakes:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                pending = broker.next_event()
                broker.cond.wait(remaining if pending is None else min(remaining, pending))
        return []

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._broker.cond:
            for delivery in deliveries:
                self._broker.release(delivery.tag)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        broker = self._broker
        with broker.cond:
            for delivery in deliveries:
                lease = broker.give_back(delivery.tag)
                if lease is not None:
                    lease.entry.redelivered = True
                    broker.push_ready(lease.queue, lease.entry)
            broker.cond.notify_all()

    def defer(self, delivery: Delivery, eta: float) -> None:
        broker = self._broker
        with broker.cond:
            lease = broker.give_back(delivery.tag)
            if lease is not None:
                broker.push(lease.queue, lease.entry, eta)
                broker.cond.notify_all()

    def renew(self, deliveries: Sequence[Delivery]) -> None:
        broker = self._broker
        with broker.cond:
            deadline = time.monotonic() + self.lease_seconds
            for delivery in deliveries:
                broker.extend(delivery.tag, deadline)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        broker = self._broker
        with broker.cond:
            lease = broker.release(delivery.tag)
            if lease is None:
                return
            letter = DeadLetter(
                id=uuid.uuid4().hex,
                queue=lease.queue,
                reason=_one_line(reason),
                message=lease.entry.message,
                failed_at=time.time(),
                delivery_count=lease.entry.delivery_count,
            )
            broker.dead[letter.id] = letter

    # -- management --------------------------------------------------------------------------
    def qsize(self, queue: str) -> int:
        with self._broker.cond:
            return self._broker.count(queue)

    def purge(self, queue: str) -> int:
        with self._broker.cond:
            return self._broker.purge(queue)

    def queues(self) -> list[str]:
        with self._broker.cond:
            return self._broker.queue_names()

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._broker.cond:
            return list(itertools.islice(self._broker.dead.values(), max(0, limit)))

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        broker = self._broker
        with broker.cond:
            letters = broker.pick_dead(ids)
            for letter in letters:
                broker.push_ready(letter.queue, broker.new_entry(letter.message))
            if letters:
                broker.cond.notify_all()
            return len(letters)

    def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        with self._broker.cond:
            return len(self._broker.pick_dead(ids))

    def wake(self) -> None:
        with self._broker.cond:
            self._wakes += 1
            self._broker.cond.notify_all()

    def close(self) -> None:
        with self._broker.cond:
            self._closed = True
        self.wake()
