"""arq (a peer, with ``--peers``): ``create_pool`` / ``enqueue_job`` and ``arq.run_worker``.

Concurrency 2 is ``max_jobs = 2`` in one asyncio worker process (``bench.apps.arq_app``, which
also sets the worker's ``poll_delay`` to 1 ms: see there). arq has no result notification:
``get`` is ``job.result(poll_delay=0.001)``, a poll every millisecond (its default is 0.5 s).
The client's coroutines run on one event loop that the adapter keeps.

No bulk path: arq enqueues one job per call (a WATCH/MULTI transaction each); the queue before
a drain is filled by ``enqueue_job`` calls, 50 at a time with ``asyncio.gather``. A message is
a key ``arq:job:<id>`` whose id waits in the sorted set ``arq:queue``; the size shown is the
key's value. ``add_nr`` keeps no result (``keep_result=0``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from bench.frameworks import Adapter, count_keys

QUEUE = "arq:queue"


class ArqAdapter(Adapter):
    name = "arq"
    app_module = "bench.apps.arq_app"
    queue_key = QUEUE

    def __init__(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.loop = asyncio.new_event_loop()
        settings = RedisSettings.from_dsn(os.environ["BENCH_BROKER_URL"])
        self.pool = self.loop.run_until_complete(create_pool(settings))

    def delay(self, task: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.pool.enqueue_job(task, *args))

    def get(self, handle: Any, timeout: float) -> Any:
        return self.loop.run_until_complete(handle.result(timeout=timeout, poll_delay=0.001))

    def preload(self, task: str, count: int) -> str:
        async def fill() -> None:
            for start in range(0, count, 50):
                calls = range(start, min(count, start + 50))
                await asyncio.gather(*(self.pool.enqueue_job(task, i, i) for i in calls))

        self.loop.run_until_complete(fill())
        return "enqueue_job(), 50 at a time (asyncio.gather)"

    def queued(self, client: Any) -> int:
        return int(client.zcard(QUEUE))

    def message_bytes(self, client: Any) -> int | None:
        head = client.zrange(QUEUE, 0, 0)
        if not head:
            return None
        return int(client.strlen(b"arq:job:" + head[0])) or None

    def results_stored(self, client: Any) -> int:
        return count_keys(client, "arq:result:*")

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        if concurrency != 2:
            raise ValueError("bench.apps.arq_app sets max_jobs = 2")
        return [sys.executable, "-m", self.app_module]
