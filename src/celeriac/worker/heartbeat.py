"""Lease renewal: every held delivery's lease is renewed while the worker holds it.

Every ``interval`` seconds (``worker_heartbeat_interval``, default a third of the transport's
lease) the heartbeat renews all held deliveries in one ``transport.renew`` call, so a live
worker's long task is never handed to another worker, and a dead worker's messages come back
within one lease. A failed renewal is logged and tried again on the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celeriac.transports.base import AsyncTransport
    from celeriac.worker.state import WorkerState

logger = logging.getLogger("celeriac.worker.heartbeat")

#: never beat more often than this, whatever the lease
MIN_INTERVAL = 0.05


def heartbeat_interval(lease_seconds: float, configured: float | None) -> float:
    """The renewal interval: the configured one, else a third of the lease."""
    interval = configured if configured else lease_seconds / 3.0
    return max(MIN_INTERVAL, float(interval))


class Heartbeat:
    """Renews the leases of ``state.held`` every ``interval`` seconds."""

    def __init__(self, transport: AsyncTransport, state: WorkerState, interval: float) -> None:
        self.transport = transport
        self.state = state
        self.interval = interval
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="celeriac-heartbeat")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.renew()

    async def renew(self) -> None:
        """Renew every held lease now (also used before a solo task blocks the loop)."""
        held = list(self.state.held.values())
        if not held:
            return
        try:
            await self.transport.renew(held)
            self.beats += 1
        except Exception as exc:
            logger.warning("Could not renew %d lease(s): %r", len(held), exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
