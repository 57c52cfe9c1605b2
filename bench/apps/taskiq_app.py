"""taskiq's benchmark app (``taskiq worker bench.apps.taskiq_app:broker``): taskiq-redis.

``ListQueueBroker`` (LPUSH / BRPOP on one list, no acknowledgement) with
``RedisAsyncResultBackend`` (results under ``taskiq-result:<id>``). ``add_nr`` raises
``NoResultError``, taskiq's way for a task to store no result.
"""

from __future__ import annotations

import os
import time

from taskiq import NoResultError
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from bench.marks import mark

URL = os.environ["BENCH_BROKER_URL"]
RESULT_PREFIX = "taskiq-result"

broker = ListQueueBroker(url=URL, queue_name="taskiq").with_result_backend(
    RedisAsyncResultBackend(redis_url=URL, prefix_str=RESULT_PREFIX)
)


@broker.task(task_name="bench.add")
async def add(x: int, y: int) -> int:
    mark()
    return x + y


@broker.task(task_name="bench.add_nr")
async def add_nr(x: int, y: int) -> int:
    mark()
    raise NoResultError


@broker.task(task_name="bench.stamp")
async def stamp() -> float:
    """When it ran (wall clock): splits a round trip into its send and its result legs."""
    return time.time()
