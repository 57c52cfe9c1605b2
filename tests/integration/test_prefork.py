"""The prefork pool in a real worker on the SQLite broker: children run the tasks, time limits,
recycling by count and by memory, a child killed mid-task, unpicklable outcomes, signals.

Every wait has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, signals, states
from celeriac.exceptions import (
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.testing.worker import start_worker
from celeriac.worker.pools.prefork import PreforkPool
from celeriac.worker.pools.prefork_child import resident_kib

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the prefork pool runs on Linux"),
    pytest.mark.timeout(60),
]

RESULT_TIMEOUT = 20.0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Celeriac]]:
    made: list[Celeriac] = []

    def make(**settings: Any) -> Celeriac:
        url = f"sqlite:///{tmp_path}/db.sqlite3"
        app = Celeriac("prefork", broker=url, backend=url, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def pool_of(worker: Any) -> PreforkPool:
    assert isinstance(worker.pool, PreforkPool)
    return worker.pool


def test_children_run_tasks_and_a_task_can_send_tasks(
    make_app: Callable[..., Celeriac], tmp_path: Path
) -> None:
    app = make_app()
    inits = tmp_path / "inits"

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="t.fan", bind=True)
    def fan(self: Any, n: int) -> list[str]:
        return [add.delay(i, i).id for i in range(n)]

    exits = tmp_path / "exits"

    def on_init(**kw: Any) -> None:
        with inits.open("a") as out:
            out.write(f"{os.getpid()}\n")

    def on_exit(pid: int, exitcode: int, **kw: Any) -> None:
        with exits.open("a") as out:
            out.write(f"{pid} {exitcode}\n")

    signals.worker_process_init.connect(on_init)
    signals.worker_process_shutdown.connect(on_exit)
    try:
        with start_worker(app, pool="prefork", concurrency=2) as worker:
            children = set(pool_of(worker).processes)
            assert len(children) == 2 and os.getpid() not in children
            pids = {pid.delay().get(timeout=RESULT_TIMEOUT) for _ in range(6)}
            assert pids <= children
            sent = fan.delay(3)
            ids = sent.get(timeout=RESULT_TIMEOUT)
            assert [app.AsyncResult(i).get(timeout=RESULT_TIMEOUT) for i in ids] == [0, 2, 4]
            assert [c.id for c in sent.children or []] == ids  # the children travel back
    finally:
        signals.worker_process_init.disconnect(on_init)
        signals.worker_process_shutdown.disconnect(on_exit)
    assert set(map(int, inits.read_text().split())) == children
    assert sorted(exits.read_text().splitlines()) == sorted(f"{p} 0" for p in children)
    assert not any(alive(p) for p in children)


def test_hard_time_limit_kills_only_that_child(
    make_app: Callable[..., Celeriac], tmp_path: Path
) -> None:
    app = make_app()
    hung = tmp_path / "hung.pid"

    @app.task(name="t.hang", time_limit=1)
    def hang() -> None:
        hung.write_text(str(os.getpid()))
        time.sleep(60)

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with start_worker(app, pool="prefork", concurrency=2) as worker:
        pool = pool_of(worker)
        result = hang.delay()
        victim = int(wait_for(lambda: hung.exists() and hung.read_text(), 10, "hang to start"))
        others = [pid.delay() for _ in range(5)]  # the other child keeps working meanwhile
        assert {o.get(timeout=RESULT_TIMEOUT) for o in others} <= set(pool.processes)
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=RESULT_TIMEOUT)
        wait_for(lambda: not alive(victim), 5, "the child to be killed")
        wait_for(lambda: len(pool.processes) == 2, 5, "a replacement child")
        assert victim not in pool.processes
        assert pid.delay().get(timeout=RESULT_TIMEOUT) in pool.processes
    assert result.state == states.FAILURE
    assert pool.counters["time_limits"] == 1
    assert app.transport.qsize("celery") == 0  # the message was acked


def test_soft_time_limit_is_catchable_and_the_hard_limit_still_applies(
    make_app: Callable[..., Celeriac],
) -> None:
    app = make_app()

    @app.task(name="t.cleanup", soft_time_limit=0.3)
    def cleanup() -> str:
        try:
            time.sleep(10)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    @app.task(name="t.uncaught", soft_time_limit=0.3)
    def uncaught() -> None:
        time.sleep(10)

    @app.task(name="t.stubborn", soft_time_limit=0.2, time_limit=0.8)
    def stubborn() -> None:
        try:
            time.sleep(10)
        except SoftTimeLimitExceeded:
            time.sleep(10)

    with start_worker(app, pool="prefork", concurrency=2):
        caught, raised, killed = cleanup.delay(), uncaught.delay(), stubborn.delay()
        assert caught.get(timeout=RESULT_TIMEOUT) == "cleaned up"
        with pytest.raises(SoftTimeLimitExceeded):
            raised.get(timeout=RESULT_TIMEOUT)
        with pytest.raises(TimeLimitExceeded):
            killed.get(timeout=RESULT_TIMEOUT)


def test_recycling_by_task_count_loses_nothing(make_app: Callable[..., Celeriac]) -> None:
    app = make_app()

    @app.task(name="t.pid")
    def pid(i: int) -> tuple[int, int]:
        return i, os.getpid()

    with start_worker(app, pool="prefork", concurrency=1, max_tasks_per_child=3) as worker:
        results = [pid.delay(i) for i in range(9)]
        got = [r.get(timeout=RESULT_TIMEOUT) for r in results]
        assert [i for i, _ in got] == list(range(9))
        by_child: dict[int, int] = {}
        for _, child in got:
            by_child[child] = by_child.get(child, 0) + 1
        assert sorted(by_child.values()) == [3, 3, 3]
        assert pool_of(worker).counters["recycled"] == 3
        wait_for(lambda: len(pool_of(worker).processes) == 1, 5, "the last replacement")
    assert worker.state.succeeded == 9


def test_recycling_by_memory_loses_nothing(make_app: Callable[..., Celeriac]) -> None:
    app = make_app()
    hoard: list[bytes] = []

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="t.hog")
    def hog(mib: int) -> int:
        hoard.append(b"\x01" * (mib << 20))  # touched pages: resident
        return os.getpid()

    # a fresh child is at most about as big as this process; 48 MiB more is the limit
    limit = resident_kib() + 48 * 1024
    with start_worker(app, pool="prefork", concurrency=1, max_memory_per_child=limit) as worker:
        first = pid.delay().get(timeout=RESULT_TIMEOUT)
        assert pid.delay().get(timeout=RESULT_TIMEOUT) == first  # small tasks: same child
        assert hog.delay(96).get(timeout=RESULT_TIMEOUT) == first
        second = pid.delay().get(timeout=RESULT_TIMEOUT)
        assert second != first
        assert pool_of(worker).counters["recycled"] == 1
    assert worker.state.succeeded == 4
    assert not alive(first)


def test_child_killed_mid_task_fails_with_worker_lost_error(
    make_app: Callable[..., Celeriac], tmp_path: Path
) -> None:
    app = make_app()
    marker = tmp_path / "victim.pid"

    @app.task(name="t.victim")
    def victim() -> None:
        marker.write_text(str(os.getpid()))
        time.sleep(60)

    @app.task(name="t.pid")
    def pid() -> int:
        return os.getpid()

    with start_worker(app, pool="prefork", concurrency=2) as worker:
        pool = pool_of(worker)
        result = victim.delay()
        child = int(wait_for(lambda: marker.exists() and marker.read_text(), 10, "victim"))
        os.kill(child, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match="signal 9"):
            result.get(timeout=RESULT_TIMEOUT)
        wait_for(lambda: len(pool.processes) == 2 and child not in pool.processes, 5, "a new child")
        assert pid.delay().get(timeout=RESULT_TIMEOUT) in pool.processes
    assert pool.counters["lost"] == 1
    assert app.transport.qsize("celery") == 0


def test_child_lost_with_reject_on_worker_lost_is_delivered_again(
    make_app: Callable[..., Celeriac],
) -> None:
    app = make_app(broker_transport_options={"visibility_timeout": 1.0})

    @app.task(name="t.fragile", bind=True, acks_late=True, reject_on_worker_lost=True)
    def fragile(self: Any) -> str:
        if not self.request.delivery_info.get("redelivered"):
            os.kill(os.getpid(), signal.SIGKILL)
        return "second delivery"

    with start_worker(app, pool="prefork", concurrency=1, heartbeat_interval=0.2):
        assert fragile.delay().get(timeout=RESULT_TIMEOUT) == "second delivery"


def test_a_message_that_keeps_killing_children_is_dead_lettered(
    make_app: Callable[..., Celeriac],
) -> None:
    app = make_app(
        broker_transport_options={"visibility_timeout": 0.5},
        broker_max_deliveries=2,
        task_reject_on_worker_lost=True,
    )

    @app.task(name="t.crash")
    def crash() -> None:
        os._exit(1)

    with start_worker(app, pool="prefork", concurrency=1, heartbeat_interval=0.1) as worker:
        result = crash.delay()
        with pytest.raises(WorkerLostError, match="delivered 3 times"):
            result.get(timeout=RESULT_TIMEOUT)
        assert pool_of(worker).counters["lost"] == 2
    (dead,) = app.transport.dead_letters()
    assert dead.reason.startswith("delivered 3 times")


class Unpicklable(Exception):
    """Takes two arguments but passes one to Exception: unpickling it fails."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code)
        self.detail = detail


def test_unpicklable_exceptions_keep_their_type_in_the_result(
    make_app: Callable[..., Celeriac],
) -> None:
    app = make_app()

    @app.task(name="t.odd")
    def odd() -> None:
        raise Unpicklable(7, "detail")

    @app.task(name="t.lock")
    def lock() -> Any:
        import threading

        return threading.Lock()

    with start_worker(app, pool="prefork", concurrency=1):
        failed, unsendable = odd.delay(), lock.delay()
        with pytest.raises(Exception, match="Unpicklable: 7"):  # cannot be rebuilt here either
            failed.get(timeout=RESULT_TIMEOUT)
        assert "Unpicklable: 7" in (failed.traceback or "")
        with pytest.raises(Exception, match="pickle"):
            unsendable.get(timeout=RESULT_TIMEOUT)
    meta = app.backend.get_meta(failed.id) if app.backend else None
    assert meta is not None
    assert meta.result["exc_type"] == "Unpicklable"
    assert meta.result["exc_module"] == __name__
    assert meta.result["exc_message"] == [7]
