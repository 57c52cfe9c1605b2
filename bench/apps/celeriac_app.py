"""Celeriac's benchmark app (``-A bench.apps.celeriac_app``)."""

from __future__ import annotations

import os
import time

from bench.marks import mark
from celeriac import Celeriac

app = Celeriac(
    "bench",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ.get("BENCH_BACKEND_URL") or None,
)


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    mark()
    return x + y


@app.task(name="bench.add_nr", ignore_result=True)
def add_nr(x: int, y: int) -> int:
    mark()
    return x + y


@app.task(name="bench.stamp")
def stamp() -> float:
    """When it ran (wall clock): splits a round trip into its send and its result legs."""
    return time.time()


@app.task(name="bench.tsum")
def tsum(values: list[int]) -> int:
    """A chord body: the sum of the header's results."""
    return sum(values)
