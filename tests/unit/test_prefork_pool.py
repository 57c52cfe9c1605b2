"""The prefork pool without a worker: the wire format, portable outcomes, autoscale parsing and
policy, and the pool itself driven directly (jobs, growth and shrinking, stop)."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.app.context import Context
from celeriac.app.trace import Failed, Ignored, Outcome, Rejected, Retrying, Succeeded
from celeriac.exceptions import (
    EncodeError,
    ImproperlyConfigured,
    NotRegistered,
    RemoteError,
    Retry,
)
from celeriac.protocol.result_meta import exception_to_dict
from celeriac.worker.autoscale import Autoscaler, parse_autoscale
from celeriac.worker.pools import Job, create_pool
from celeriac.worker.pools.prefork import PreforkPool
from celeriac.worker.pools.prefork_child import (
    FrameReader,
    PoolRemoteError,
    context_from_state,
    context_state,
    describe_status,
    frame,
    from_wire,
    portable,
    to_wire,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the prefork pool runs on Linux")


# -- the wire ----------------------------------------------------------------------------------
def roundtrip(outcome: Outcome) -> Outcome:
    return from_wire(pickle.loads(pickle.dumps(portable(to_wire(outcome)))))


def test_outcomes_survive_the_wire() -> None:
    eta = datetime(2030, 1, 1, tzinfo=timezone.utc)
    retry = Retry("again", ValueError("x"), 5, queue="later", args=(1, 2))
    retrying = roundtrip(Retrying(ValueError("x"), eta, retry, "tb", 0.5))
    assert isinstance(retrying, Retrying)
    assert retrying.retry.options == {"queue": "later", "args": (1, 2)}  # Retry alone loses them
    assert (retrying.retry.when, retrying.eta, retrying.traceback) == (5, eta, "tb")
    assert roundtrip(Succeeded([1, "a"], 0.1)) == Succeeded([1, "a"], 0.1)
    assert roundtrip(Rejected(True, "busy", 0.2)) == Rejected(True, "busy", 0.2)
    assert roundtrip(Ignored(0.3)) == Ignored(0.3)
    failed = roundtrip(Failed(KeyError("k"), "tb", 0.4))
    assert isinstance(failed, Failed) and repr(failed.exc) == "KeyError('k')"


class TwoArgs(Exception):
    def __init__(self, code: int, lock: Any) -> None:
        super().__init__(code, lock)


def test_unpicklable_exceptions_and_values_are_replaced() -> None:
    failed = roundtrip(Failed(TwoArgs(3, threading.Lock()), "tb", 0.0))
    assert isinstance(failed, Failed) and isinstance(failed.exc, PoolRemoteError)
    record = exception_to_dict(failed.exc)
    assert record["exc_type"] == "TwoArgs" and record["exc_module"] == __name__
    assert record["exc_message"][0] == 3 and "lock" in record["exc_message"][1]
    assert isinstance(failed.exc, RemoteError) and str(failed.exc).startswith(f"{__name__}.TwoArgs")
    value = roundtrip(Succeeded(threading.Lock(), 0.0))
    assert isinstance(value, Failed) and isinstance(value.exc, EncodeError)
    reason = roundtrip(Rejected(False, threading.Lock(), 0.0))
    assert isinstance(reason, Rejected) and "lock" in reason.reason


def test_frames_are_split_whatever_the_chunks() -> None:
    data = frame(1, "one") + frame(2, {"two": 2}) + frame(3, b"x" * 70000)
    reader = FrameReader()
    got: list[tuple[int, bytes]] = []
    for start in range(0, len(data), 1000):
        got += reader.feed(data[start : start + 1000])
    assert [(seq, pickle.loads(body)) for seq, body in got][:2] == [(1, "one"), (2, {"two": 2})]
    assert got[2][0] == 3 and len(pickle.loads(got[2][1])) == 70000


def test_context_travels_without_message_and_children() -> None:
    request = Context(id="x", task="t", args=(1,), kwargs={"a": 2}, message=object())
    request.children.append("child")
    copy = context_from_state(pickle.loads(pickle.dumps(context_state(request))))
    assert (copy.id, copy.args, copy.kwargs, copy.message, copy.children) == (
        "x",
        (1,),
        {"a": 2},
        None,
        [],
    )


def test_exit_status_descriptions() -> None:
    assert describe_status(9) == "signal 9 (SIGKILL)"
    assert describe_status(3 << 8) == "exitcode 3"
    assert describe_status(None) == "an unknown exit status"


# -- autoscale ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "pair"),
    [("10,3", (10, 3)), ("4", (4, 0)), ((6, 2), (6, 2)), ([5], (5, 0)), (None, None), ("", None)],
)
def test_parse_autoscale(value: Any, pair: Any) -> None:
    assert parse_autoscale(value) == pair


@pytest.mark.parametrize("value", ["a,b", "0,0", "3,5", "3,-1", ","])
def test_parse_autoscale_rejects(value: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="autoscale"):
        parse_autoscale(value)


def test_autoscaler_stops_long_idle_processes_above_the_minimum() -> None:
    scaler = Autoscaler(maximum=6, minimum=2, keepalive=30)
    assert scaler.to_stop(live=6, idle_for=[40, 31, 29, 0]) == 2
    assert scaler.to_stop(live=3, idle_for=[40, 31, 35]) == 1
    assert scaler.to_stop(live=2, idle_for=[40, 40]) == 0


# -- the pool, driven directly -----------------------------------------------------------------
@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("prefork-unit", broker="memory://pu", backend="memory://pu")
    yield application
    application.close()


def job(task: Any, *args: Any, soft: float | None = None, hard: float | None = None) -> Job:
    request = Context(id=f"id-{time.monotonic_ns()}", task=task.name, args=args)
    request.called_directly = False
    return Job(task, request, soft, hard)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pool_runs_sync_tasks_in_children_and_async_ones_on_the_loop(app: Celeriac) -> None:
    @app.task(name="u.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="u.apid")
    async def apid() -> int:
        return os.getpid()

    async def scenario() -> tuple[list[Outcome], list[int], Outcome]:
        pool = create_pool("prefork", 2, tasks=app.tasks)
        await pool.start()
        assert isinstance(pool, PreforkPool)
        children = pool.processes
        try:
            outcomes = await asyncio.gather(*(pool.run(job(t)) for t in (pid, pid, apid)))
            unknown = await pool.run(Job(pid, Context(id="u", task="u.unknown")))
        finally:
            await pool.stop()
        return outcomes, children, unknown

    outcomes, children, unknown = asyncio.run(scenario())
    values = [o.value for o in outcomes if isinstance(o, Succeeded)]
    assert set(values[:2]) <= set(children) and values[2] == os.getpid()
    assert isinstance(unknown, Failed) and isinstance(unknown.exc, NotRegistered)
    assert not any(alive(p) for p in children)


def test_pool_autoscale_grows_with_load_and_shrinks_when_idle(app: Celeriac) -> None:
    @app.task(name="u.nap")
    def nap(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    async def scenario() -> tuple[int, int, int, set[int]]:
        pool = PreforkPool(1, tasks=app.tasks, autoscale=(3, 1), autoscale_keepalive=0.5)
        await pool.start()
        try:
            at_start = len(pool.processes)
            outcomes = await asyncio.gather(*(pool.run(job(nap, 0.3)) for _ in range(3)))
            grown = pool.counters["forked"]
            deadline = time.monotonic() + 5
            while len(pool.processes) > 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            shrunk = len(pool.processes)
        finally:
            await pool.stop()
        return at_start, grown, shrunk, {o.value for o in outcomes if isinstance(o, Succeeded)}

    at_start, grown, shrunk, pids = asyncio.run(scenario())
    assert (at_start, grown, shrunk) == (1, 3, 1)
    assert len(pids) == 3  # three processes ran at once


def test_pool_needs_fork_and_a_running_start(app: Celeriac) -> None:
    pool = PreforkPool(1, tasks=app.tasks)
    assert pool.describe() == "1 (prefork)"
    assert PreforkPool(1, autoscale=(4, 2)).describe() == "2..4 (prefork, autoscale)"

    @app.task(name="u.noop")
    def noop() -> None: ...

    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(pool.run(job(noop)))


def test_pool_survives_the_death_of_its_fork_server(app: Celeriac) -> None:
    @app.task(name="u.sleep")
    def sleep() -> None:
        time.sleep(30)

    @app.task(name="u.pid2")
    def pid() -> int:
        return os.getpid()

    async def scenario() -> tuple[Outcome, list[int], list[int], set[int]]:
        pool = PreforkPool(2, tasks=app.tasks)
        await pool.start()
        try:
            before = pool.processes
            server = pool._server
            assert server is not None and server.pid is not None
            running = asyncio.ensure_future(pool.run(job(sleep)))
            await asyncio.sleep(0.2)
            os.kill(server.pid, signal.SIGKILL)  # its children die with it
            lost = await asyncio.wait_for(running, 10)
            deadline = time.monotonic() + 10
            while len(pool.processes) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            outcomes = await asyncio.gather(*(pool.run(job(pid)) for _ in range(4)))
            after = pool.processes
        finally:
            await pool.stop()
        return lost, before, after, {o.value for o in outcomes if isinstance(o, Succeeded)}

    lost, before, after, pids = asyncio.run(scenario())
    assert isinstance(lost, Failed) and type(lost.exc).__name__ == "WorkerLostError"
    assert len(after) == 2 and not set(after) & set(before)
    assert pids <= set(after)
    assert not any(alive(p) for p in before + after)
