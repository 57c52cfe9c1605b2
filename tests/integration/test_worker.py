"""The worker end to end on the in-memory broker and result store, through ``start_worker``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac.exceptions import (
    EncodeError,
    Reject,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from celeriac.testing.worker import start_worker

POOLS = ["solo", "threads", "asyncio"]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


@pytest.mark.parametrize("pool", POOLS)
def test_success(app: Celeriac, pool: str) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, pool=pool) as worker:
        results = [add.delay(i, i) for i in range(10)]
        assert [r.get(timeout=5) for r in results] == [2 * i for i in range(10)]
        assert results[0].state == states.SUCCESS
        assert results[0].date_done is not None
    assert worker.state.succeeded == 10


@pytest.mark.parametrize("pool", POOLS)
def test_async_def_task(app: Celeriac, pool: str) -> None:
    @app.task(name="t.aadd")
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0.001)
        return x + y

    with start_worker(app, pool=pool):
        assert aadd.delay(2, 3).get(timeout=5) == 5


def test_async_tasks_run_on_the_loop_concurrently(app: Celeriac) -> None:
    started = threading.Semaphore(0)
    gate = asyncio.Event  # created per loop inside the task
    threads: set[str] = set()

    @app.task(name="t.wait_for_peers")
    async def wait_for_peers() -> str:
        threads.add(threading.current_thread().name)
        started.release()
        for _ in range(500):  # all 5 must be in flight at once for each to see the others
            if len(peers) >= 5:
                return "ok"
            await asyncio.sleep(0.01)
        return "alone"

    peers: list[int] = []

    @app.task(name="t.join")
    async def join() -> None:
        peers.append(1)

    assert gate is asyncio.Event
    with start_worker(app, pool="asyncio", concurrency=10):
        results = [wait_for_peers.delay() for _ in range(5)]
        for _ in range(5):
            assert started.acquire(timeout=5)
        for _ in range(5):
            join.delay()
        assert [r.get(timeout=10) for r in results] == ["ok"] * 5
    assert len(threads) == 1  # the worker's loop thread, no thread hop


def test_failure_keeps_exception_type(app: Celeriac) -> None:
    class CustomError(Exception):
        pass

    @app.task(name="t.fail")
    def fail(kind: str) -> None:
        if kind == "value":
            raise ValueError("boom", 42)
        raise KeyError(kind)

    with start_worker(app) as worker:
        result = fail.delay("value")
        with pytest.raises(ValueError) as info:
            result.get(timeout=5)
        assert info.value.args == ("boom", 42)
        assert result.state == states.FAILURE
        assert "ValueError" in (result.traceback or "")
        with pytest.raises(KeyError):
            fail.delay("key").get(timeout=5)
    assert worker.state.failed == 2


def test_retry_then_success(app: Celeriac) -> None:
    @app.task(name="t.flaky", bind=True, max_retries=5)
    def flaky(self: Any, x: int) -> tuple[int, int]:
        if self.request.retries < 2:
            raise self.retry(exc=ConnectionError("try again"), countdown=0.05)
        return x, self.request.retries

    with start_worker(app) as worker:
        result = flaky.delay(7)
        assert result.get(timeout=10) == [7, 2]
    assert worker.state.counters.retried == 2
    assert worker.state.succeeded == 1


def test_retry_exhausted_fails_with_the_original_error(app: Celeriac) -> None:
    @app.task(name="t.hopeless", bind=True, max_retries=1)
    def hopeless(self: Any) -> None:
        raise self.retry(exc=ConnectionError("down"), countdown=0)

    with start_worker(app), pytest.raises(ConnectionError):
        hopeless.delay().get(timeout=10)


def test_autoretry_with_backoff(app: Celeriac) -> None:
    calls: list[float] = []

    @app.task(
        name="t.auto",
        autoretry_for=(ConnectionError,),
        retry_backoff=0.05,
        retry_jitter=False,
        max_retries=3,
    )
    def auto() -> int:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("flaky")
        return len(calls)

    with start_worker(app):
        assert auto.delay().get(timeout=10) == 3
    # countdowns 0.05 then 0.1: each retry waits in the broker
    assert calls[1] - calls[0] >= 0.04
    assert calls[2] - calls[1] >= 0.09


@pytest.mark.parametrize("option", ["countdown", "eta"])
def test_countdown_and_eta_are_honoured(app: Celeriac, option: str) -> None:
    ran_at: list[float] = []

    @app.task(name="t.when")
    def when() -> None:
        ran_at.append(time.time())

    with start_worker(app) as worker:
        due = time.time() + 0.4
        if option == "countdown":
            result = when.apply_async(countdown=0.4)
        else:
            result = when.apply_async(eta=datetime.fromtimestamp(due, timezone.utc))
        result.get(timeout=5)
        assert worker.state.counters.deferred == 0  # the client delayed it in the broker
    assert ran_at[0] >= due - 0.05


def test_early_eta_message_is_deferred_to_the_broker(app: Celeriac) -> None:
    """A Celery client puts ETA tasks on the plain queue: the worker defers, never holds them."""
    ran_at: list[float] = []

    @app.task(name="t.early")
    def early() -> None:
        ran_at.append(time.time())

    publication = app.prepare("t.early", (), {}, countdown=0.5)
    due = publication.message.eta.timestamp()  # type: ignore[union-attr]
    with start_worker(app) as worker:
        app.transport.publish(publication.queue, app.encode(publication.message))  # no eta
        # waiting in the broker, not held by the worker
        assert worker.state.wait_for(lambda s: s.counters.deferred == 1 and not s.held, 5)
        assert ran_at == []
        app.AsyncResult(publication.message.id).get(timeout=5)
    assert ran_at[0] >= due - 0.02


def test_expired_task_is_revoked_not_run(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task(name="t.late")
    def late() -> None:
        ran.append(1)

    with start_worker(app) as worker:
        past = datetime.now(timezone.utc) - timedelta(seconds=1)
        result = late.apply_async(expires=past)
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=5)
        assert result.state == states.REVOKED
        assert worker.state.wait_for(lambda s: not s.held, timeout=5)  # acked
        assert app.transport.qsize("celery") == 0
    assert ran == []


def test_ignore_result(app: Celeriac) -> None:
    @app.task(name="t.quiet", ignore_result=True)
    def quiet() -> int:
        return 1

    with start_worker(app) as worker:
        result = quiet.delay()
        assert worker.state.wait_for(lambda s: s.succeeded == 1, timeout=5)
        assert worker.state.wait_for(lambda s: not s.held, timeout=5)
        assert result.state == states.PENDING


def test_track_started(app: Celeriac) -> None:
    release = threading.Event()

    @app.task(name="t.slow", track_started=True)
    def slow() -> str:
        release.wait(5)
        return "done"

    with start_worker(app) as worker:
        result = slow.delay()
        wait_until(lambda: result.state == states.STARTED, what="STARTED")
        info = app.backend.get_meta(result.id).result  # type: ignore[union-attr]
        assert info["hostname"] == worker.hostname and isinstance(info["pid"], int)
        release.set()
        assert result.get(timeout=5) == "done"


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_soft_time_limit_on_sync_tasks(app: Celeriac, pool: str) -> None:
    @app.task(name="t.cleanup", soft_time_limit=0.1)
    def cleanup() -> str:
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    @app.task(name="t.overrun", soft_time_limit=0.1)
    def overrun() -> None:
        for _ in range(1000):
            time.sleep(0.01)

    with start_worker(app, pool=pool):
        assert cleanup.delay().get(timeout=5) == "cleaned up"
        with pytest.raises(SoftTimeLimitExceeded):
            overrun.delay().get(timeout=5)


@pytest.mark.parametrize("pool", ["asyncio", "threads"])
def test_soft_time_limit_on_async_tasks(app: Celeriac, pool: str) -> None:
    @app.task(name="t.acleanup")
    async def acleanup() -> str:
        try:
            await asyncio.sleep(10)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    with start_worker(app, pool=pool):
        result = acleanup.apply_async(soft_time_limit=0.1)
        assert result.get(timeout=5) == "cleaned up"


def test_hard_time_limit_on_threads_fails_and_the_worker_goes_on(app: Celeriac) -> None:
    release = threading.Event()

    @app.task(name="t.stuck", time_limit=0.1)
    def stuck() -> None:
        release.wait(10)

    @app.task(name="t.ping")
    def ping() -> str:
        return "pong"

    try:
        with start_worker(app, concurrency=1) as worker:
            with pytest.raises(TimeLimitExceeded):
                stuck.delay().get(timeout=5)
            assert ping.delay().get(timeout=5) == "pong"
            assert worker.pool.abandoned == 1  # type: ignore[union-attr]
    finally:
        release.set()


def test_unserialisable_result_is_an_encode_error_failure(app: Celeriac) -> None:
    @app.task(name="t.weird")
    def weird() -> object:
        return object()

    with start_worker(app), pytest.raises(EncodeError, match="could not be serialised"):
        weird.delay().get(timeout=5)


def test_link_callback_and_chain_step(app: Celeriac) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    with start_worker(app):
        # chain is reversed: mul(.., 10) runs next, then add(.., 1)
        first = add.apply_async(
            (1, 2), chain=[dict(add.s(1)), dict(mul.s(10))], link=dict(add.s(100))
        )
        assert first.get(timeout=5) == 3
        children = first.children
        assert len(children) == 2
        callback, step = children
        assert callback.get(timeout=5) == 103
        assert step.get(timeout=5) == 30
        (last,) = step.children
        assert last.get(timeout=5) == 31
        assert last.children == []
        # parent/root ids travel along the chain
        meta = app.backend.get_meta(last.id)  # type: ignore[union-attr]
        assert meta.parent_id == step.id


def test_errbacks(app: Celeriac) -> None:
    called_here: list[tuple[str, str]] = []

    @app.task(name="t.fail")
    def fail() -> None:
        raise ValueError("nope")

    @app.task(name="t.on_error")
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        called_here.append((request.id, repr(exc)))

    @app.task(name="t.record")
    def record(task_id: str) -> str:
        return f"failed: {task_id}"

    with start_worker(app) as worker:
        result = fail.apply_async(link_error=[dict(on_error.s()), dict(record.s())])
        with pytest.raises(ValueError):
            result.get(timeout=5)
        assert called_here == [(result.id, "ValueError('nope')")]
        (sent,) = app.backend.get_meta(result.id).children or [None]  # type: ignore[union-attr]
        assert sent is None  # errbacks are not children
        assert worker.state.wait_for(lambda s: s.succeeded == 1, timeout=5)


def test_reject_and_ignore(app: Celeriac) -> None:
    from celeriac.exceptions import Ignore

    @app.task(name="t.rejecting")
    def rejecting() -> None:
        raise Reject("bad input", requeue=False)

    @app.task(name="t.ignoring")
    def ignoring() -> None:
        raise Ignore()

    with start_worker(app) as worker:
        rejected = rejecting.delay()
        ignored = ignoring.delay()
        assert worker.state.wait_for(lambda s: s.processed == 2 and not s.held, timeout=5)
        (letter,) = app.transport.dead_letters()
        assert letter.reason == "rejected by the task: bad input"
        assert rejected.state == ignored.state == states.PENDING


@pytest.mark.parametrize("acks_late", [True, False])
def test_ack_timing(app: Celeriac, acks_late: bool) -> None:
    app.conf.task_acks_late = acks_late
    running = threading.Event()
    release = threading.Event()

    @app.task(name="t.block")
    def block() -> None:
        running.set()
        release.wait(5)

    with start_worker(app, concurrency=1) as worker:
        result = block.delay()
        assert running.wait(5)
        if acks_late:
            assert app.transport.qsize("celery") == 1  # still held by the worker
        else:
            wait_until(lambda: app.transport.qsize("celery") == 0, what="early ack")
        release.set()
        result.get(timeout=5)
        assert worker.state.wait_for(lambda s: not s.held, timeout=5)
        assert app.transport.qsize("celery") == 0


def test_leases_are_renewed_while_a_long_task_runs(app: Celeriac) -> None:
    app.conf.broker_transport_options = {"visibility_timeout": 0.3}
    runs: list[int] = []

    @app.task(name="t.long")
    def long() -> str:
        runs.append(1)
        time.sleep(1.0)  # more than three leases
        return "once"

    with start_worker(app, concurrency=2) as worker:
        assert long.delay().get(timeout=5) == "once"
        assert worker.heartbeat.beats >= 2  # type: ignore[union-attr]
    assert runs == [1]


def test_queues_option(app: Celeriac) -> None:
    @app.task(name="t.where")
    def where() -> str:
        return "ran"

    with start_worker(app, queues="a,b") as worker:
        in_b = where.apply_async(queue="b")
        in_default = where.apply_async()
        assert in_b.get(timeout=5) == "ran"
        assert worker.state.processed == 1
        assert in_default.state == states.PENDING
    assert app.transport.qsize("celery") == 1


def test_many_tasks_are_batched(app: Celeriac) -> None:
    @app.task(name="t.noop")
    def noop(i: int) -> int:
        return i

    with start_worker(app, concurrency=4) as worker:
        results = [noop.delay(i) for i in range(300)]
        assert [r.get(timeout=10) for r in results] == list(range(300))
        assert worker.batch.batches < 300  # type: ignore[union-attr]


def test_solo_writes_each_result_before_blocking_on_the_next_task(app: Celeriac) -> None:
    release = threading.Event()

    @app.task(name="t.quick")
    def quick() -> str:
        return "quick"

    @app.task(name="t.blocking")
    def blocking() -> str:
        release.wait(10)
        return "blocking"

    first = quick.delay()  # both sent first, so that one fetch gets both
    second = blocking.delay()
    try:
        with start_worker(app, pool="solo"):
            # the loop is blocked by the second task: the first's result must already be out
            assert first.get(timeout=3) == "quick"
            wait_until(lambda: app.transport.qsize("celery") == 1, 3, "the first task's ack")
            assert second.state == states.PENDING
            release.set()
            assert second.get(timeout=5) == "blocking"
    finally:
        release.set()
