"""Pools run task functions and return Outcome values: solo, threads, asyncio; time limits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.app.context import Context
from celeriac.app.trace import Failed, Outcome, Succeeded
from celeriac.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.worker.pools import POOLS, Job, Pool, create_pool
from celeriac.worker.pools.base import Interruptible, run_interruptible
from celeriac.worker.pools.threads import ThreadPool


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("pools", broker="memory://pools", backend="memory://pools")
    yield application
    application.close()


def job(task: Any, *args: Any, soft: float | None = None, hard: float | None = None) -> Job:
    request = Context(id="id-1", task=task.name, args=args, called_directly=False)
    return Job(task, request, soft, hard)


async def run_in(pool: Pool, *jobs: Job) -> list[Outcome]:
    await pool.start()
    try:
        return list(await asyncio.gather(*(pool.run(j) for j in jobs)))
    finally:
        await pool.stop()


def run(pool: Pool, *jobs: Job) -> list[Outcome]:
    return asyncio.run(run_in(pool, *jobs))


@pytest.mark.parametrize("name", ["solo", "threads", "asyncio"])
def test_sync_and_async_tasks_succeed_in_every_pool(app: Celeriac, name: str) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    first, second = run(create_pool(name, 2), job(add, 2, 3), job(aadd, 4, 5))
    assert isinstance(first, Succeeded) and first.value == 5
    assert isinstance(second, Succeeded) and second.value == 9


def test_failure_is_an_outcome_not_an_exception(app: Celeriac) -> None:
    @app.task
    def boom() -> None:
        raise KeyError("nope")

    (outcome,) = run(create_pool("threads", 1), job(boom))
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.exc, KeyError)
    assert "KeyError" in outcome.traceback


def test_where_tasks_run(app: Celeriac) -> None:
    seen: dict[str, str] = {}

    @app.task
    def sync_task() -> None:
        seen["sync"] = threading.current_thread().name

    @app.task
    async def async_task() -> None:
        seen["async"] = threading.current_thread().name

    async def main() -> None:
        seen["loop"] = threading.current_thread().name
        for name in ("solo", "threads"):
            pool = create_pool(name, 2)
            await run_in(pool, job(sync_task), job(async_task))
            seen[f"{name}-sync"] = seen.pop("sync")
            seen[f"{name}-async"] = seen.pop("async")

    asyncio.run(main())
    assert seen["solo-sync"] == seen["loop"]  # inline
    assert seen["threads-sync"].startswith("celeriac-threads-")
    assert seen["solo-async"] == seen["threads-async"] == seen["loop"]  # no thread hop


def test_threads_run_concurrently(app: Celeriac) -> None:
    barrier = threading.Barrier(3, timeout=5)

    @app.task
    def meet() -> bool:
        barrier.wait()
        return True

    outcomes = run(create_pool("threads", 3), job(meet), job(meet), job(meet))
    assert all(isinstance(o, Succeeded) for o in outcomes)


def test_solo_is_concurrency_one(app: Celeriac) -> None:
    assert create_pool("solo", 8).concurrency == 1


def test_unknown_and_missing_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImproperlyConfigured, match="Unknown pool 'gevent'"):
        create_pool("gevent", 1)
    monkeypatch.setitem(POOLS, "gone", "celeriac.worker.pools.gone:GonePool")
    with pytest.raises(ImproperlyConfigured, match="not available"):
        create_pool("gone", 1)


# -- soft time limits ---------------------------------------------------------------------------
def _busy_until_interrupted(limit: float = 5.0) -> str:
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            time.sleep(0.005)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "never interrupted"


@pytest.mark.parametrize("name", ["threads", "solo"])
def test_soft_time_limit_raises_inside_a_sync_task(app: Celeriac, name: str) -> None:
    @app.task
    def slow() -> str:
        return _busy_until_interrupted()

    started = time.monotonic()
    (outcome,) = run(create_pool(name, 1), job(slow, soft=0.1))
    assert isinstance(outcome, Succeeded) and outcome.value == "cleaned up"
    assert time.monotonic() - started < 2


def test_uncaught_soft_time_limit_fails_the_task(app: Celeriac) -> None:
    @app.task
    def slow() -> None:
        time.sleep(0.01)
        while True:
            time.sleep(0.005)

    (outcome,) = run(create_pool("threads", 1), job(slow, soft=0.1))
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.exc, SoftTimeLimitExceeded)


@pytest.mark.parametrize("name", ["asyncio", "threads", "solo"])
def test_soft_time_limit_raises_inside_a_coroutine(app: Celeriac, name: str) -> None:
    @app.task
    async def slow() -> str:
        try:
            await asyncio.sleep(10)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)  # the task may still await while cleaning up
            return "cleaned up"
        return "never interrupted"

    started = time.monotonic()
    (outcome,) = run(create_pool(name, 1), job(slow, soft=0.1))
    assert isinstance(outcome, Succeeded) and outcome.value == "cleaned up"
    assert time.monotonic() - started < 2


def test_soft_limit_on_coroutine_is_not_a_cancellation(app: Celeriac) -> None:
    @app.task
    async def slow() -> bool:
        with contextlib.suppress(SoftTimeLimitExceeded):
            await asyncio.sleep(10)
        task = asyncio.current_task()
        assert task is not None
        # the cancellation request was withdrawn: asyncio.timeout etc. still work after it
        return task.cancelling() == 0 if hasattr(task, "cancelling") else True

    (outcome,) = run(create_pool("asyncio", 1), job(slow, soft=0.05))
    assert isinstance(outcome, Succeeded) and outcome.value is True


def test_uncaught_soft_limit_in_coroutine_fails(app: Celeriac) -> None:
    @app.task
    async def slow() -> None:
        await asyncio.sleep(10)

    (outcome,) = run(create_pool("asyncio", 1), job(slow, soft=0.05))
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.exc, SoftTimeLimitExceeded)


# -- hard time limits ---------------------------------------------------------------------------
def test_hard_limit_on_coroutine_cancels_it(app: Celeriac) -> None:
    cancelled = threading.Event()

    @app.task
    async def stuck() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    (outcome,) = run(create_pool("asyncio", 1), job(stuck, hard=0.1))
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.exc, TimeLimitExceeded)
    assert cancelled.wait(2)


def test_hard_limit_on_thread_abandons_it_and_keeps_concurrency(app: Celeriac) -> None:
    release = threading.Event()

    @app.task
    def stuck() -> str:
        # blocked in C code: the injected TimeLimitExceeded cannot land until it returns
        release.wait(10)
        return "late"

    @app.task
    def quick() -> str:
        return "ok"

    async def main() -> tuple[Outcome, Outcome, int, int]:
        pool = ThreadPool(1)
        await pool.start()
        try:
            first = await pool.run(job(stuck, hard=0.1))
            second = await asyncio.wait_for(pool.run(job(quick)), 5)
            return first, second, pool.abandoned, len(pool._threads)
        finally:
            release.set()
            await pool.stop()

    first, second, abandoned, threads = asyncio.run(main())
    assert isinstance(first, Failed) and isinstance(first.exc, TimeLimitExceeded)
    assert isinstance(second, Succeeded) and second.value == "ok"
    assert abandoned == 1
    assert threads == 1  # the replacement; the abandoned thread is no longer counted


def test_interrupt_after_the_job_never_lands_in_the_next_one() -> None:
    state = Interruptible()
    outcome = run_interruptible(state, lambda: Succeeded(1, 0.0), time.monotonic())
    assert isinstance(outcome, Succeeded)
    assert state.interrupt(SoftTimeLimitExceeded) is False  # done: refused
    time.sleep(0.01)  # nothing pending fires here


def test_cancelled_before_start_is_not_run() -> None:
    state = Interruptible()
    assert state.cancel() is True
    ran: list[int] = []

    def call() -> Outcome:
        ran.append(1)
        return Succeeded(1, 0.0)

    outcome = run_interruptible(state, call, time.monotonic())
    assert ran == []
    assert isinstance(outcome, Failed)


def test_thread_outcomes_reach_the_loop_in_batches() -> None:
    """Outcomes posted while a wake-up is pending ride on it: one loop wake-up, not one each."""
    from celeriac.worker.pools.threads import _Completions

    async def main() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        completions = _Completions(loop)
        wakes = 0
        original = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return original(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        futures = [loop.create_future() for _ in range(3)]

        class Item:  # what a pool thread posts: the job, finished on the loop
            def __init__(self, future: asyncio.Future[Any]) -> None:
                self.future = future

            def finish(self, outcome: Any) -> None:
                self.future.set_result(outcome)

        def post_all() -> None:
            for i, future in enumerate(futures):
                completions.post(Item(future), Succeeded(i, 0.0))  # type: ignore[arg-type]

        thread = threading.Thread(target=post_all)
        thread.start()
        thread.join()
        done = await asyncio.wait_for(asyncio.gather(*futures), 5)
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
        return [outcome.value for outcome in done], wakes

    values, wakes = asyncio.run(main())
    assert values == [0, 1, 2]
    assert wakes == 1


def test_threads_submit_runs_a_job_to_a_bare_future(app: Celeriac) -> None:
    """``submit``: the outcome comes on a future (no coroutine); the soft limit still applies;
    a job with a hard limit is declined (``run`` enforces that one); a withdrawn queued job
    never runs."""
    ran: list[int] = []
    gate = threading.Event()

    @app.task
    def add(x: int, y: int) -> int:
        ran.append(x)
        return x + y

    @app.task
    def blocked() -> None:
        gate.wait(5)

    @app.task
    def slow() -> str:
        try:
            time.sleep(5)
        except SoftTimeLimitExceeded:
            return "soft"
        return "slept"

    async def main() -> list[Any]:
        pool = ThreadPool(1)
        await pool.start()
        try:
            assert pool.submit(job(add, 1, 2, hard=5.0)) is None
            first = pool.submit(job(add, 2, 3))
            soft = pool.submit(job(slow, soft=0.05))
            assert first is not None and soft is not None
            outcomes = [await first, await soft]
            holder = pool.submit(job(blocked))
            queued_job = job(add, 7, 7)
            queued = pool.submit(queued_job)
            assert holder is not None and queued is not None
            assert pool.withdraw(queued_job)
            gate.set()
            outcomes += [await holder, await queued]
            return outcomes
        finally:
            gate.set()
            await pool.stop()

    added, soft, held, withdrawn = asyncio.run(main())
    assert isinstance(added, Succeeded) and added.value == 5
    assert isinstance(soft, Succeeded) and soft.value == "soft"
    assert isinstance(held, Succeeded)
    assert isinstance(withdrawn, Failed) and isinstance(withdrawn.exc, asyncio.CancelledError)
    assert ran == [2]
