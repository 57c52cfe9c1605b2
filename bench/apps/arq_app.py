"""arq's benchmark app: ``WorkerSettings`` (``max_jobs = 2``); ``python -m bench.apps.arq_app``.

``poll_delay`` is 1 ms: arq's worker polls its queue (a sorted set) and starts at most
``max_jobs`` jobs per poll, so its default of 0.5 s would cap a two-job worker at 4 tasks/s.
The worker is started here (``main``) rather than by the ``arq`` command so that it does not log
every job at INFO (the other workers run with warnings only), and so that it stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from arq.connections import RedisSettings
from arq.worker import create_worker, func

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


def main() -> None:
    """``arq.run_worker``, with SIGTERM's cancel repeated every 50 ms until the worker stops.

    arq 0.28 pins redis-py below 6; on the redis-py 8 that Celery needs, the cancel that arq's
    SIGTERM handler sends its main task is now and then swallowed inside a Redis call, and the
    worker polls on until it is killed (1 stop in 3 here). Cancelling again ends it.
    """
    worker = create_worker(WorkerSettings)  # type: ignore[arg-type]

    def again() -> None:
        task = worker.main_task
        if task is not None and not task.done():
            task.cancel()
            worker.loop.call_later(0.05, again)

    def on_sigterm() -> None:
        worker.handle_sig(signal.SIGTERM)
        worker.loop.call_later(0.05, again)

    worker.loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    worker.run()


if __name__ == "__main__":
    main()
