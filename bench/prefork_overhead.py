"""The prefork pool's cost per task: pipe round trips and worker drains, beside the threads pool.

``python -m bench.prefork_overhead [--jobs N] [--drain N]`` prints:

- *round trip*: one no-op job at a time through the pool (``pool.run``, ``-c 1``): for prefork
  this is pickling the call, two pipe writes, two process wake-ups and unpickling the outcome;
  the threads pool's figure is the same path with a thread instead of a process;
- *pipelined*: N no-op jobs handed to the pool at once (``-c 2``);
  each as µs per job of wall-clock time and of CPU time (all processes: the worker and, for
  prefork, the fork server and its children);
- *drain*: N no-op tasks published first, then a worker (``-c 2``) started; tasks/s from its
  start until all are acked, on the in-memory broker (pure worker cost) and on SQLite.

Figures move with the machine's load; run it on a quiet machine, and compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from typing import Any

from celeriac import Celeriac
from celeriac.app.context import Context
from celeriac.testing.worker import start_worker
from celeriac.worker.pools import Job, Pool, create_pool


def make_app(url: str) -> Celeriac:
    app = Celeriac("overhead", broker=url, backend=url)

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        return None

    return app


def job(app: Celeriac, i: int) -> Job:
    request = Context(id=f"job-{i}", task="bench.noop", called_directly=False)
    return Job(app.tasks["bench.noop"], request)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def pool_figure(app: Celeriac, name: str, count: int, size: int, serial: bool) -> str:
    """µs per no-op job (wall clock, and CPU of all processes), one at a time or all at once."""
    options: dict[str, Any] = {"tasks": app.tasks} if name == "prefork" else {}
    children_before = _children_cpu()
    pool: Pool = create_pool(name, size, **options)
    await pool.start()
    for i in range(200):  # warm up
        await pool.run(job(app, i))
    jobs = [job(app, i) for i in range(count)]
    cpu, started = time.process_time(), time.perf_counter()
    if serial:
        for one in jobs:
            await pool.run(one)
    else:
        await asyncio.gather(*(pool.run(one) for one in jobs))
    wall = (time.perf_counter() - started) / count * 1e6
    cpu = time.process_time() - cpu
    await pool.stop()  # children reaped: their CPU time is counted
    cpu = (cpu + _children_cpu() - children_before) / count * 1e6
    return f"{wall:7.1f} µs/job wall, {cpu:6.1f} µs/job CPU"


def drain(url: str, pool: str, count: int) -> float:
    """Tasks per second for a ``-c 2`` worker draining ``count`` published no-op tasks."""
    app = make_app(url)
    app.transport.publish_many(
        [("celery", app.encode(app.prepare("bench.noop").message), None) for _ in range(count)]
    )
    started = time.perf_counter()
    with start_worker(app, pool=pool, concurrency=2, ready_timeout=30) as worker:
        if not worker.state.wait_for(lambda s: s.processed >= count and not s.held, 600):
            raise RuntimeError(f"{pool}: drained only {worker.state.processed} of {count}")
        elapsed = time.perf_counter() - started
    app.close()
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefork_overhead")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per pool figure")
    parser.add_argument("--drain", type=int, default=5000, help="tasks per drain")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    app = make_app("memory://overhead")
    for name in ("threads", "prefork"):
        one = asyncio.run(pool_figure(app, name, args.jobs, 1, serial=True))
        many = asyncio.run(pool_figure(app, name, args.jobs, 2, serial=False))
        print(f"{name:8} round trip -c 1: {one}")
        print(f"{name:8} pipelined  -c 2: {many}")
    with tempfile.TemporaryDirectory() as tmp:
        for broker in ("memory", "sqlite"):
            for name in ("threads", "prefork"):
                url = (
                    f"memory://drain-{name}" if broker == "memory" else f"sqlite:///{tmp}/{name}.db"
                )
                rate = drain(url, name, args.drain)
                print(f"drain {broker:6} {name:8} -c 2: {rate:8.0f} tasks/s ({args.drain} no-ops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
