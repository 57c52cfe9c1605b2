"""``asyncio`` pool: for ``async def`` tasks, which run as asyncio tasks on the worker's loop.

``concurrency`` is how many tasks run at once (the consumer hands out that many slots), so it
may be large (``-c 100``) for I/O-bound coroutines. The soft time limit cancels the
coroutine's current ``await`` and raises ``SoftTimeLimitExceeded`` there; the hard limit
cancels it for good.

Synchronous tasks sent to this worker still work: they run on a small thread pool
(``threads``, default ``min(concurrency, cpu_count + 4)``) with the ``threads`` pool's
semantics, so a blocking function never stalls the loop.
"""

from __future__ import annotations

import os

from celeriac.worker.pools.threads import ThreadPool


class AsyncioPool(ThreadPool):
    """Coroutines on the loop, synchronous functions on a few threads."""

    name = "asyncio"
    #: ``concurrency`` counts coroutines here, and sync tasks already queue for the few threads
    queues_jobs = False

    def __init__(self, concurrency: int, *, threads: int | None = None) -> None:
        size = threads or min(concurrency, (os.cpu_count() or 1) + 4)
        super().__init__(concurrency, threads=size)

    def describe(self) -> str:
        return f"{self.concurrency} (asyncio, {self.size} threads for sync tasks)"
