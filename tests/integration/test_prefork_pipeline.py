"""The prefork pool with more jobs than children (driven directly, real child processes): short
jobs are pipelined up to the depth, long ones are not; a child killed at a hard limit, a child
that dies and a child recycled by task count only settle their head job, the jobs queued behind
it run on other children; ``withdraw`` takes back only jobs not yet written to a child.

Every wait has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.app.context import Context
from celeriac.app.trace import Failed, Outcome, Succeeded
from celeriac.exceptions import TimeLimitExceeded, WorkerLostError
from celeriac.worker.pools import Job
from celeriac.worker.pools.prefork import SHORT_TASK, PreforkPool, _Proc, _Running

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the prefork pool runs on Linux"),
    pytest.mark.timeout(60),
]

DEADLINE = 20.0


class Watched(PreforkPool):
    """Records, for every job written to a child, how many jobs that child then held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peak = 0
        self.most_sent = 0
        #: (job, the jobs ahead of it in its child's pipe) for every job written
        self.behind: list[tuple[Job, list[Job]]] = []

    def _send(self, proc: _Proc, running: _Running) -> bool:
        sent = super()._send(proc, running)
        if sent:
            self.peak = max(self.peak, len(proc.running))
            self.most_sent = max(self.most_sent, proc.sent)
            self.behind.append((running.job, [r.job for r in list(proc.running)[:-1]]))
        return sent


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("prefork-pipe", broker="memory://pp", backend="memory://pp")
    yield application
    application.close()


def job(task: Any, *args: Any, hard: float | None = None) -> Job:
    request = Context(id=f"id-{time.monotonic_ns()}", task=task.name, args=args)
    request.called_directly = False
    return Job(task, request, None, hard)


def run(pool: PreforkPool, scenario: Callable[[], Awaitable[Any]]) -> Any:
    """Start ``pool``, run ``scenario`` (with a deadline), stop the pool."""

    async def main() -> Any:
        await pool.start()
        try:
            return await asyncio.wait_for(scenario(), DEADLINE)
        finally:
            await pool.stop()

    return asyncio.run(main())


def values(outcomes: list[Outcome]) -> list[Any]:
    assert all(isinstance(o, Succeeded) for o in outcomes), outcomes
    return [o.value for o in outcomes if isinstance(o, Succeeded)]


async def warm_up(pool: PreforkPool, task: Any) -> None:
    """Short jobs until the pool knows its tasks are short (a busy machine may stretch one)."""
    for _ in range(50):
        await asyncio.gather(*(pool.run(job(task, 0)) for _ in range(4)))
        if pool.average_runtime is not None and pool.average_runtime < SHORT_TASK:
            return
    raise AssertionError(f"no-op tasks average {pool.average_runtime} s")


def register(app: Celeriac, tmp_path: Path) -> dict[str, Any]:
    marker = tmp_path / "head.pid"

    @app.task(name="p.square")
    def square(i: int) -> tuple[int, int]:
        return i * i, os.getpid()

    @app.task(name="p.hang")
    def hang() -> None:
        marker.write_text(str(os.getpid()))
        time.sleep(60)

    @app.task(name="p.crash")
    def crash() -> None:
        marker.write_text(str(os.getpid()))
        time.sleep(0.2)  # the jobs behind it are written meanwhile
        os._exit(3)

    @app.task(name="p.nap")
    def nap(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @app.task(name="p.size")
    def size(data: bytes) -> tuple[int, int]:
        return len(data), os.getpid()

    return {
        "square": square,
        "hang": hang,
        "crash": crash,
        "nap": nap,
        "size": size,
        "marker": marker,
    }


def test_many_short_jobs_are_pipelined_up_to_the_depth(app: Celeriac, tmp_path: Path) -> None:
    tasks = register(app, tmp_path)
    square = tasks["square"]
    pool = Watched(2, tasks=app.tasks, pipeline_depth=4)

    async def scenario() -> tuple[list[Outcome], list[int]]:
        children = pool.processes
        await warm_up(pool, square)
        return await asyncio.gather(*(pool.run(job(square, i)) for i in range(500))), children

    outcomes, children = run(pool, scenario)
    got = values(outcomes)
    assert [v for v, _ in got] == [i * i for i in range(500)]
    assert {pid for _, pid in got} == set(children)  # both children worked, none was replaced
    assert pool.peak == 4  # pipelined, never beyond the depth
    assert pool.counters["forked"] == 2


def test_jobs_behind_one_bigger_than_the_pipe_keep_their_order(
    app: Celeriac, tmp_path: Path
) -> None:
    tasks = register(app, tmp_path)
    square, size = tasks["square"], tasks["size"]
    pool = Watched(1, tasks=app.tasks, pipeline_depth=4)
    big = 1 << 20  # the pipe takes 64 KiB at a time: the rest is written when it has room

    async def scenario() -> list[Outcome]:
        await warm_up(pool, square)
        jobs = [job(size, b"x" * big), job(square, 3), job(size, b"y" * big), job(square, 4)]
        return list(await asyncio.gather(*(pool.run(j) for j in jobs)))

    got = values(run(pool, scenario))
    assert [v for v, _ in got] == [big, 9, big, 16]
    assert pool.peak == 4


def test_a_child_killed_at_its_hard_limit_fails_only_its_head(
    app: Celeriac, tmp_path: Path
) -> None:
    tasks = register(app, tmp_path)
    square, hang = tasks["square"], tasks["hang"]
    pool = Watched(2, tasks=app.tasks, pipeline_depth=4)
    hung = job(hang, hard=1.0)

    async def scenario() -> tuple[Outcome, list[Outcome]]:
        await warm_up(pool, square)
        head = asyncio.ensure_future(pool.run(hung))
        others = [asyncio.ensure_future(pool.run(job(square, i))) for i in range(12)]
        return await head, list(await asyncio.gather(*others))

    head, outcomes = run(pool, scenario)
    assert isinstance(head, Failed) and isinstance(head.exc, TimeLimitExceeded)
    assert any(a is hung for _, ahead in pool.behind for a in ahead)
    victim = int(tasks["marker"].read_text())
    got = values(outcomes)
    assert [v for v, _ in got] == [i * i for i in range(12)]
    assert victim not in {pid for _, pid in got}  # the jobs behind it ran elsewhere
    assert pool.counters["time_limits"] == 1


def test_a_queued_job_starts_and_is_timed_from_when_it_becomes_the_head(
    app: Celeriac, tmp_path: Path
) -> None:
    tasks = register(app, tmp_path)
    square, nap, hang = tasks["square"], tasks["nap"], tasks["hang"]
    pool = Watched(1, tasks=app.tasks, pipeline_depth=2)

    async def scenario() -> tuple[Outcome, Outcome]:
        await warm_up(pool, square)
        first = asyncio.ensure_future(pool.run(job(nap, 0.8)))
        second = asyncio.ensure_future(pool.run(job(hang, hard=0.5)))  # behind it, in its pipe
        return await first, await second

    first, second = run(pool, scenario)
    assert pool.peak == 2
    assert isinstance(first, Succeeded)  # not killed by the second job's limit
    assert isinstance(second, Failed) and isinstance(second.exc, TimeLimitExceeded)
    assert 0.5 <= second.runtime < 0.5 + 0.5  # from its start, not from when it was written
    assert pool.counters["time_limits"] == 1


def test_a_child_that_dies_loses_only_its_head(app: Celeriac, tmp_path: Path) -> None:
    tasks = register(app, tmp_path)
    square, crash = tasks["square"], tasks["crash"]
    pool = Watched(2, tasks=app.tasks, pipeline_depth=4)
    crashing = job(crash)

    async def scenario() -> tuple[Outcome, list[Outcome]]:
        await warm_up(pool, square)
        head = asyncio.ensure_future(pool.run(crashing))
        others = [asyncio.ensure_future(pool.run(job(square, i))) for i in range(12)]
        return await head, list(await asyncio.gather(*others))

    head, outcomes = run(pool, scenario)
    assert isinstance(head, Failed) and isinstance(head.exc, WorkerLostError)
    assert "exitcode 3" in str(head.exc)
    assert any(a is crashing for _, ahead in pool.behind for a in ahead)
    victim = int(tasks["marker"].read_text())
    got = values(outcomes)
    assert [v for v, _ in got] == [i * i for i in range(12)]
    assert victim not in {pid for _, pid in got}
    assert pool.counters["lost"] == 1


def test_recycling_by_task_count_never_overfills_a_child(app: Celeriac, tmp_path: Path) -> None:
    square = register(app, tmp_path)["square"]
    pool = Watched(2, tasks=app.tasks, pipeline_depth=4, max_tasks_per_child=3)

    async def scenario() -> list[Outcome]:
        await warm_up(pool, square)
        return list(await asyncio.gather(*(pool.run(job(square, i)) for i in range(20))))

    got = values(run(pool, scenario))
    assert [v for v, _ in got] == [i * i for i in range(20)]
    per_child = Counter(pid for _, pid in got)
    assert max(per_child.values()) <= 3 and len(per_child) >= 7
    assert pool.most_sent == 3 and pool.peak > 1  # pipelined, within the tasks left
    assert pool.counters["recycled"] >= 6  # 24 jobs, 3 per child (the last ones may stay)


def test_long_tasks_are_not_pipelined(app: Celeriac, tmp_path: Path) -> None:
    nap = register(app, tmp_path)["nap"]
    pool = Watched(2, tasks=app.tasks, pipeline_depth=4)
    seconds = SHORT_TASK * 4

    async def scenario() -> list[Outcome]:
        first = await asyncio.gather(*(pool.run(job(nap, seconds)) for _ in range(6)))
        assert pool.average_runtime is not None and pool.average_runtime > SHORT_TASK
        return list(first) + list(
            await asyncio.gather(*(pool.run(job(nap, seconds)) for _ in range(6)))
        )

    assert len(values(run(pool, scenario))) == 12
    assert pool.peak == 1


def test_withdraw_takes_back_only_jobs_not_written_to_a_child(
    app: Celeriac, tmp_path: Path
) -> None:
    tasks = register(app, tmp_path)
    square, nap = tasks["square"], tasks["nap"]
    pool = Watched(1, tasks=app.tasks, pipeline_depth=2)

    async def scenario() -> tuple[list[bool], list[Outcome]]:
        await warm_up(pool, square)
        # one child, depth 2: the first runs, the second waits in its pipe, the third here
        jobs = [job(nap, 0.3), job(square, 1), job(square, 2)]
        futures = [asyncio.ensure_future(pool.run(j)) for j in jobs]
        await asyncio.sleep(0)  # each run() has handed its job to the pool
        assert pool.peak == 2
        withdrawn = [pool.withdraw(j) for j in reversed(jobs)]
        withdrawn.append(pool.withdraw(jobs[2]))  # only once
        return withdrawn, list(await asyncio.gather(*futures))

    withdrawn, (first, second, third) = run(pool, scenario)
    assert withdrawn == [True, False, False, False]
    assert isinstance(first, Succeeded) and isinstance(second, Succeeded)
    assert second.value[0] == 1
    assert isinstance(third, Failed) and isinstance(third.exc, asyncio.CancelledError)
    assert "withdrawn" in str(third.exc)


def test_warm_stop_runs_the_jobs_written_to_children(app: Celeriac, tmp_path: Path) -> None:
    square = register(app, tmp_path)["square"]
    pool = Watched(2, tasks=app.tasks, pipeline_depth=4)
    written: list[asyncio.Future[Outcome]] = []
    queued: list[asyncio.Future[Outcome]] = []

    async def main() -> None:
        await pool.start()
        try:
            await warm_up(pool, square)
            jobs = [job(square, i) for i in range(40)]
            futures = [asyncio.ensure_future(pool.run(j)) for j in jobs]
            await asyncio.sleep(0)  # each run() has handed its job to the pool
            waiting = {id(r.job) for r in pool._waiting}
            for j, future in zip(jobs, futures, strict=True):
                (queued if id(j) in waiting else written).append(future)
        finally:
            await asyncio.wait_for(pool.stop(), DEADLINE)
        await asyncio.wait(written + queued, timeout=DEADLINE)

    asyncio.run(main())
    assert len(written) == 8 and len(queued) == 32  # two children, four jobs each
    assert all(isinstance(f.result(), Succeeded) for f in written)
    assert all(f.cancelled() for f in queued)
