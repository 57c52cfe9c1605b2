"""Worker state counters, heartbeat interval and renewal, queue parsing, prefetch sizing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery
from celeriac.worker.heartbeat import Heartbeat, heartbeat_interval
from celeriac.worker.main import Worker, parse_queues
from celeriac.worker.state import WorkerState


def test_counters_and_wait_for() -> None:
    state = WorkerState()
    threading.Timer(0.05, lambda: state.bump("processed", 2)).start()
    started = time.monotonic()
    assert state.wait_for(lambda s: s.processed >= 2, timeout=5)
    assert time.monotonic() - started < 2
    assert not state.wait_for(lambda s: s.failed > 0, timeout=0.05)
    assert state.info()["processed"] == 2


def test_heartbeat_interval() -> None:
    assert heartbeat_interval(60.0, None) == 20.0
    assert heartbeat_interval(60.0, 5.0) == 5.0
    assert heartbeat_interval(0.01, None) == 0.05  # never busier than MIN_INTERVAL


def test_heartbeat_renews_every_held_delivery() -> None:
    renewed: list[list[str]] = []

    class Transport:
        async def renew(self, deliveries: Sequence[Delivery]) -> None:
            renewed.append(sorted(d.tag for d in deliveries))

    state = WorkerState()
    state.held = {t: Delivery(t, "q", RawMessage(b"")) for t in ("a", "b")}

    async def main() -> None:
        beat = Heartbeat(Transport(), state, 0.05)  # type: ignore[arg-type]
        beat.start()
        deadline = time.monotonic() + 5
        while len(renewed) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await beat.stop()

    asyncio.run(main())
    assert renewed[:2] == [["a", "b"], ["a", "b"]]


def test_parse_queues() -> None:
    assert parse_queues("a, b,,a") == ["a", "b"]
    assert parse_queues(["x", " y "]) == ["x", "y"]
    assert parse_queues(None) == []


def make_app(**settings: Any) -> Celeriac:
    return Celeriac("w", broker="memory://state", backend="memory://state", **settings)


def test_worker_defaults_and_prefetch() -> None:
    worker = Worker(make_app(), concurrency=3)
    assert worker.pool_name == "threads"
    assert worker.queues == ["celery"]
    assert worker.prefetch == 12  # 3 x worker_prefetch_multiplier (4)
    assert Worker(make_app(), pool="solo", concurrency=8).concurrency == 1
    assert Worker(make_app(), concurrency=2, prefetch_multiplier=0).prefetch == 0  # unlimited
    assert Worker(make_app(task_default_queue="jobs")).queues == ["jobs"]


def test_worker_rejects_bad_options() -> None:
    with pytest.raises(ImproperlyConfigured, match="Unknown pool 'greenlets'"):
        Worker(make_app(), pool="greenlets")


def test_banner_names_everything_and_hides_passwords() -> None:
    app = Celeriac("proj", broker="memory://banner", backend="memory://banner")

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker = Worker(app, hostname="w1@example", concurrency=4, queues="a,b")
    banner = worker.banner()
    for expected in (
        "w1@example",
        "app:         proj:",
        "transport:   memory://banner",
        "results:     memory://banner",
        "concurrency: 4 (threads)",
        ".> a ",
        ".> b ",
        "  . proj.add",
    ):
        assert expected in banner
    secret = Celeriac("p", broker="redis://user:s3cret@host:6379/0", backend="memory://x")
    assert "s3cret" not in Worker(secret).banner()
