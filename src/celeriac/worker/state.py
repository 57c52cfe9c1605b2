"""What one worker holds and has done: counters, held deliveries, reserved and active requests.

Everything here is changed on the worker's event-loop thread only. Other threads (tests, a
future remote-control handler) may read the counters at any time, and ``wait_for`` lets them
block until a condition on the counters holds, with a deadline.

Vocabulary
    - *held*: deliveries taken from the broker and not yet acked, requeued, deferred or
      dead-lettered; the heartbeat renews their leases.
    - *reserved*: valid requests waiting for a free pool slot (prefetched, not started).
    - *active*: requests whose task function is running in the pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celeriac.transports.base import Delivery
    from celeriac.worker.request import Request


@dataclass
class Counters:
    """Running totals since the worker started (``processed`` = task runs that finished)."""

    received: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    ignored: int = 0
    revoked: int = 0
    deferred: int = 0
    dead_lettered: int = 0
    requeued: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class WorkerState:
    """Counters plus the deliveries and requests the worker currently holds."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.held: dict[str, Delivery] = {}
        self.reserved: dict[str, Request] = {}
        self.active: dict[str, Request] = {}
        self._changed = threading.Condition()
        #: how many ``wait_for`` calls are waiting (no wake-up to send while there are none)
        self._waiting = 0

    # -- counters ------------------------------------------------------------------------------
    def bump(self, counter: str, amount: int = 1) -> None:
        """Add ``amount`` to a counter and wake ``wait_for`` callers."""
        with self._changed:
            setattr(self.counters, counter, getattr(self.counters, counter) + amount)
            if self._waiting:
                self._changed.notify_all()

    def notify(self) -> None:
        """Wake ``wait_for`` callers after a change to held/reserved/active."""
        if self._waiting:
            with self._changed:
                self._changed.notify_all()

    @property
    def processed(self) -> int:
        return self.counters.processed

    @property
    def succeeded(self) -> int:
        return self.counters.succeeded

    @property
    def failed(self) -> int:
        return self.counters.failed

    @property
    def dead_lettered(self) -> int:
        return self.counters.dead_lettered

    def wait_for(self, predicate: Callable[[WorkerState], bool], timeout: float) -> bool:
        """Block until ``predicate(state)`` is true; False when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._waiting += 1
            try:
                while not predicate(self):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # Re-check now and then too: held/active changes do not always notify.
                    self._changed.wait(min(remaining, 0.05))
                return True
            finally:
                self._waiting -= 1

    # -- snapshots -----------------------------------------------------------------------------
    def info(self) -> dict[str, object]:
        """A snapshot for logs and tests (counters and sizes)."""
        return {
            **self.counters.as_dict(),
            "held": len(self.held),
            "reserved": len(self.reserved),
            "active": len(self.active),
        }
