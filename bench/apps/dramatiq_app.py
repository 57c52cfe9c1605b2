"""Dramatiq's benchmark app (``dramatiq bench.apps.dramatiq_app``): Redis broker and results."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.marks import mark

URL = os.environ["BENCH_BROKER_URL"]
#: result keys readable as ``dramatiq-results:<queue>:<actor>:<id>``, so a drain can count them
backend = RedisBackend(url=URL, use_namespace_prefix_keys=True)
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.add", store_results=True, max_retries=0)
def add(x: int, y: int) -> int:
    mark()
    return x + y


@dramatiq.actor(actor_name="bench.add_nr", max_retries=0)
def add_nr(x: int, y: int) -> int:
    """``store_results`` is off by default: nothing is stored."""
    mark()
    return x + y


@dramatiq.actor(actor_name="bench.stamp", store_results=True, max_retries=0)
def stamp() -> float:
    """When it ran (wall clock): splits a round trip into its send and its result legs."""
    return time.time()
