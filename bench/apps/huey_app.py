"""Huey's benchmark app (``huey_consumer bench.apps.huey_app.huey``): Redis, result notices."""

from __future__ import annotations

import os
import time

from huey import RedisHuey

from bench.marks import mark

huey = RedisHuey("bench", url=os.environ["BENCH_BROKER_URL"], notify_result=True)


@huey.task(name="bench.add")
def add(x: int, y: int) -> int:
    mark()
    return x + y


@huey.task(name="bench.add_nr")
def add_nr(x: int, y: int) -> None:
    """Huey stores no result for a task that returns None: its ``ignore_result``."""
    mark()


@huey.task(name="bench.stamp")
def stamp() -> float:
    """When it ran (wall clock): splits a round trip into its send and its result legs."""
    return time.time()
