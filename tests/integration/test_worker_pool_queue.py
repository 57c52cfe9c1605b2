"""Short synchronous tasks queue in the threads pool; the prefetch follows the tasks' pace.

- A pool that queues jobs is handed queueable requests (sync, ``acks_late``, no
  ``track_started``) beyond its slots, up to the prefetch; the others wait in the consumer for a
  slot, as before. Either way no more than ``concurrency`` tasks run at once. Time limits of
  queued tasks count from their start, not from the hand-off.
- At a warm shutdown, queued jobs that have not started go back to the broker, not run.
- With a multiplier above 1 the prefetch grows for short tasks (at most 8x) and stays at its
  configured value for long ones; a multiplier of 1 never grows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.testing.worker import start_worker
from celeriac.worker import Worker


class Gate:
    """A task body that blocks until released, and counts how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0

    def __call__(self, i: int) -> int:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        try:
            if not self.release.wait(10):
                raise TimeoutError("never released")
            return i
        finally:
            with self.lock:
                self.running -= 1


def gate_task(app: Celeriac, gate: Gate, **options: Any) -> Any:
    @app.task(name="t.gate", **options)
    def block(i: int) -> int:
        return gate(i)

    return block


def test_short_sync_tasks_wait_in_the_pool_queue(app: Celeriac) -> None:
    gate = Gate()
    block = gate_task(app, gate)
    # sent before the worker starts, so its first fetch takes four at once (see
    # test_time_limits_of_queued_tasks_count_from_their_start)
    results = [block.delay(i) for i in range(5)]
    with start_worker(app, concurrency=1, prefetch_multiplier=4) as worker:
        # one running, three handed to the pool's queue (prefetch 4), one left in the broker
        assert worker.state.wait_for(lambda s: len(s.active) == 4, timeout=5)
        assert not worker.state.reserved
        assert worker.state.wait_for(lambda s: gate.started == 1, timeout=5)
        gate.release.set()
        assert [r.get(timeout=5) for r in results] == [0, 1, 2, 3, 4]
    assert gate.most == 1  # the queue never runs more than `concurrency` at once


@pytest.mark.parametrize(
    "options",
    [{"track_started": True}, {"acks_late": False}],
    ids=["track_started", "acks_early"],
)
def test_other_tasks_wait_for_a_slot(app: Celeriac, options: dict[str, Any]) -> None:
    gate = Gate()
    block = gate_task(app, gate, **options)
    with start_worker(app, concurrency=1, prefetch_multiplier=4) as worker:
        results = [block.delay(i) for i in range(5)]
        assert worker.state.wait_for(
            lambda s: len(s.active) == 1 and len(s.reserved) == 3, timeout=5
        )
        gate.release.set()
        assert [r.get(timeout=5) for r in results] == [0, 1, 2, 3, 4]
    assert gate.most == 1


def test_async_tasks_are_not_queued_in_the_pool(app: Celeriac) -> None:
    release = asyncio.Event()
    loop_ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task(name="t.agate")
    async def agate(i: int) -> int:
        loops.append(asyncio.get_running_loop())
        loop_ready.set()
        await release.wait()
        return i

    with start_worker(app, concurrency=1, prefetch_multiplier=4) as worker:
        results = [agate.delay(i) for i in range(3)]
        assert loop_ready.wait(5)
        assert worker.state.wait_for(
            lambda s: len(s.active) == 1 and len(s.reserved) == 2, timeout=5
        )
        loops[-1].call_soon_threadsafe(release.set)
        assert [r.get(timeout=5) for r in results] == [0, 1, 2]


def test_warm_shutdown_requeues_jobs_queued_in_the_pool(app: Celeriac) -> None:
    gate = Gate()
    block = gate_task(app, gate)
    results = [block.delay(i) for i in range(4)]  # before the start: one fetch takes all four
    worker = Worker(app, concurrency=1, prefetch_multiplier=4, hostname="queue@test")
    worker.start_in_thread()
    try:
        assert worker.wait_ready(5)
        assert worker.state.wait_for(lambda s: len(s.active) == 4 and gate.started, timeout=5)
        worker.stop(wait=False)
        # the three queued jobs are withdrawn and requeued while the first one still runs
        assert worker.state.wait_for(
            lambda s: s.counters.requeued == 3 and len(s.held) == 1, timeout=5
        )
        assert gate.started == 1
        gate.release.set()
        assert worker.join(5)
    finally:
        gate.release.set()
        worker.stop(cold=True, timeout=5)
    assert worker.exitcode == 0
    assert gate.started == 1
    assert results[0].get(timeout=1) == 0
    assert app.transport.qsize("celery") == 3
    with start_worker(app, concurrency=2):
        assert [r.get(timeout=5) for r in results] == [0, 1, 2, 3]


def _prefetch_after(app: Celeriac, multiplier: int, body: Callable[[int], int], n: int) -> int:
    task = app.task(name="t.pace")(body)
    with start_worker(app, concurrency=2, prefetch_multiplier=multiplier) as worker:
        results = [task.delay(i) for i in range(n)]
        assert [r.get(timeout=20) for r in results] == list(range(n))
        assert worker.consumer is not None
        return worker.consumer.prefetch


def test_prefetch_grows_for_short_tasks(app: Celeriac) -> None:
    prefetch = _prefetch_after(app, 4, lambda i: i, 300)
    assert 8 < prefetch <= 8 * 8


def test_prefetch_stays_for_long_tasks(app: Celeriac) -> None:
    def slow(i: int) -> int:
        time.sleep(0.06)  # 2 slots x 0.1 s window / 0.06 s = 3 messages: below the base 8
        return i

    assert _prefetch_after(app, 4, slow, 12) == 8


def test_prefetch_multiplier_one_never_grows(app: Celeriac) -> None:
    assert _prefetch_after(app, 1, lambda i: i, 200) == 2


def test_prefetch_window_zero_turns_growth_off(app: Celeriac) -> None:
    app.conf.worker_prefetch_window = 0
    assert _prefetch_after(app, 4, lambda i: i, 200) == 8


@pytest.mark.parametrize("limit", ["time_limit", "soft_time_limit"])
def test_time_limits_of_queued_tasks_count_from_their_start(app: Celeriac, limit: str) -> None:
    @app.task(name="t.nap", **{limit: 1.0})
    def nap(i: int) -> int:
        time.sleep(0.6)
        return i

    # all four wait before the worker starts, so its first fetch takes them together: sent one
    # by one to a running worker, a first fetch that took three would (rightly) wait for room
    # before taking the fourth, and four would never be in the pool at once
    results = [nap.delay(i) for i in range(4)]
    with start_worker(app, concurrency=1, prefetch_multiplier=4) as worker:
        assert worker.state.wait_for(lambda s: len(s.active) == 4, timeout=5)
        # the last one starts 1.8 s after the hand-off, and each runs 0.6 s of its 1 s limit
        assert [r.get(timeout=10) for r in results] == [0, 1, 2, 3]


@pytest.mark.parametrize("limit", ["time_limit", "soft_time_limit"])
def test_a_queued_task_still_meets_its_time_limit(app: Celeriac, limit: str) -> None:
    from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    @app.task(name="t.nap")
    def nap() -> str:
        time.sleep(0.5)
        return "slept"

    @app.task(name="t.spin", **{limit: 0.8})
    def spin() -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "spun"

    with start_worker(app, concurrency=1, prefetch_multiplier=4):
        first, second = nap.delay(), spin.delay()
        assert first.get(timeout=5) == "slept"
        expected = TimeLimitExceeded if limit == "time_limit" else SoftTimeLimitExceeded
        with pytest.raises(expected):
            second.get(timeout=10)
        meta = app.backend.get_meta(second.id)  # type: ignore[union-attr]
        assert meta.date_done is not None


def test_plain_sync_tasks_run_without_a_coroutine_each(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain synchronous task goes to the pool with ``Pool.submit`` and its outcome is
    handled in a callback (no asyncio Task per request); a task with a link callback takes
    the coroutine path for its follow-up, and both give the same results."""
    from celeriac.worker.consumer import Consumer

    coroutines: list[str] = []
    original = Consumer._run

    async def counted(self: Consumer, request: Any, job: Any) -> None:
        coroutines.append(request.name)
        await original(self, request, job)

    monkeypatch.setattr(Consumer, "_run", counted)

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, pool="threads", concurrency=2):
        plain = [add.delay(i, i) for i in range(20)]
        assert [r.get(timeout=10) for r in plain] == [i + i for i in range(20)]
        linked = add.apply_async((1, 2), link=add.s(10))
        assert linked.get(timeout=10) == 3
        [child] = linked.children or []
        assert child.get(timeout=10) == 13
    assert coroutines == []
