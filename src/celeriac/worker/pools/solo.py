"""``solo`` pool: one task at a time, synchronous tasks run inline on the worker's loop thread.

As in Celery, this is for debugging and for code that must run in the worker's main thread
(``signal.signal``, some GUI/C libraries). While a synchronous task runs, the event loop is
blocked: no message is fetched, acknowledged or renewed, and shutdown signals are handled when
the task returns. So before each synchronous task the worker writes everything earlier tasks
produced (results, acks, follow-up messages) and renews every lease (``before_inline``). A task
running longer than the broker lease (``visibility_timeout``, default 60 s) may still be handed
to another worker; the pool logs a warning after a task that overran the lease. Use the
``threads`` pool for long tasks.

Time limits: a timer thread raises ``SoftTimeLimitExceeded`` (soft) or ``TimeLimitExceeded``
(hard) inside the running task, at its next Python bytecode.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from celeriac.app.trace import Outcome, execute
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.worker.pools.base import Interruptible, Job, Pool, run_interruptible

logger = logging.getLogger("celeriac.worker.pool")


class SoloPool(Pool):
    """Inline execution, concurrency 1."""

    name = "solo"

    def __init__(
        self,
        concurrency: int = 1,
        *,
        lease_seconds: float | None = None,
        before_inline: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(1)
        self.lease_seconds = lease_seconds
        #: awaited before each inline task (the worker flushes its I/O and renews leases)
        self.before_inline = before_inline

    async def run_sync(self, job: Job) -> Outcome:
        if self.before_inline is not None:
            await self.before_inline()
        state = Interruptible()
        timers = [
            _timer(job.soft_time_limit, state, SoftTimeLimitExceeded, job),
            _timer(job.time_limit, state, TimeLimitExceeded, job),
        ]
        started = time.monotonic()
        try:
            outcome = run_interruptible(
                state,
                lambda: contextvars.copy_context().run(execute, job.task, job.request),
                started,
            )
        finally:
            for timer in timers:
                if timer is not None:
                    timer.cancel()
        elapsed = time.monotonic() - started
        if self.lease_seconds is not None and elapsed > self.lease_seconds:
            logger.warning(
                "Task %s blocked the solo pool for %.1fs, longer than the %.0fs broker lease: "
                "its message may have been delivered again. Use -P threads for long tasks.",
                job.label,
                elapsed,
                self.lease_seconds,
            )
        return outcome


def _timer(
    seconds: float | None, state: Interruptible, exc_type: type[BaseException], job: Job
) -> threading.Timer | None:
    if not seconds:
        return None

    def fire() -> None:
        if state.interrupt(exc_type):
            kind = "Soft" if exc_type is SoftTimeLimitExceeded else "Hard"
            logger.warning("%s time limit (%ss) exceeded for %s", kind, seconds, job.label)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
