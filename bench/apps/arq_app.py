"""arq's benchmark app: ``WorkerSettings`` (``max_jobs = 2``); ``python -m bench.apps.arq_app``.

``poll_delay`` is 1 ms: arq's worker polls its queue (a sorted set) and starts at most
``max_jobs`` jobs per poll, so its default of 0.5 s would cap a two-job worker at 4 tasks/s.
The worker is started through ``arq.run_worker`` rather than the ``arq`` command so that it does
not log every job at INFO (the other workers run with warnings only).
"""

from __future__ import annotations

import os
import time
from typing import Any

from arq import run_worker
from arq.connections import RedisSettings
from arq.worker import func

from bench.marks import mark

REDIS = RedisSettings.from_dsn(os.environ["BENCH_BROKER_URL"])


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    mark()
    return x + y


async def add_nr(ctx: dict[str, Any], x: int, y: int) -> int:
    """Registered with ``keep_result=0``: arq keeps no result."""
    mark()
    return x + y


async def stamp(ctx: dict[str, Any]) -> float:
    """When it ran (wall clock): splits a round trip into its send and its result legs."""
    return time.time()


class WorkerSettings:
    functions = [
        func(add, name="add"),
        func(add_nr, name="add_nr", keep_result=0),
        func(stamp, name="stamp"),
    ]
    redis_settings = REDIS
    max_jobs = 2
    poll_delay = 0.001


if __name__ == "__main__":
    run_worker(WorkerSettings)  # type: ignore[arg-type]
