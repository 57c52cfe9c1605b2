"""Shared by the canvas integration tests: one app + real worker per backend, and its tasks.

Backends: in-memory, SQLite (``sqlite:///<tmp>/db.sqlite3``, broker and results) and Redis
(``CELERIAC_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/9``, with a unique
``global_keyprefix``; skipped when unreachable, failed under ``CI=true``; only this prefix's
keys are deleted afterwards, never FLUSHDB).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.app.task import Task
from celeriac.testing.worker import start_worker
from celeriac.worker.main import Worker

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
BACKENDS = ["memory", "sqlite", "redis"]


class Tally:
    """Thread-safe counters and records the tasks write, keyed per test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.records: dict[str, list[Any]] = {}

    def bump(self, key: str) -> int:
        with self.lock:
            self.counts[key] += 1
            return self.counts[key]

    def record(self, key: str, value: Any) -> None:
        with self.lock:
            self.records.setdefault(key, []).append(value)

    def wait(self, key: str, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = list(self.records.get(key, ()))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {count} record(s) of {key!r}: {found}")
            time.sleep(0.01)


@dataclass
class Env:
    kind: str
    app: Celeriac
    worker: Worker
    tally: Tally
    t: dict[str, Task[Any, Any]]


def redis_client() -> Any:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no Redis at {REDIS_URL}: {exc} (CI=true: servers are required)")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    return client


def make_app(kind: str, tmp: Path) -> tuple[Celeriac, Any]:
    """(app, cleanup) for a backend kind."""
    name = f"canvas-{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        return Celeriac("canvas", broker=f"memory://{name}", backend=f"memory://{name}"), None
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'db.sqlite3'}"
        return Celeriac("canvas", broker=url, backend=url), None
    client = redis_client()
    prefix = f"celeriac-test-{name}:"
    options = {"global_keyprefix": prefix}
    app = Celeriac(
        "canvas",
        broker=REDIS_URL,
        backend=REDIS_URL,
        broker_transport_options=options,
        result_backend_transport_options=options,
    )

    def cleanup() -> None:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()

    return app, cleanup


def register(app: Celeriac, tally: Tally) -> dict[str, Task[Any, Any]]:  # noqa: C901
    """The tasks of the canvas tests."""

    @app.task(name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="c.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="c.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="c.slow_add")
    def slow_add(x: int, y: int) -> int:
        time.sleep(random.random() * 0.02)
        return x + y

    @app.task(name="c.boom")
    def boom(*args: Any) -> None:
        raise ValueError("boom", *args)

    @app.task(name="c.collect")
    def collect(results: Any, key: str) -> Any:
        tally.bump(key)
        tally.record(key, results)
        return results

    @app.task(name="c.flaky", bind=True, max_retries=5)
    def flaky(self: Any, x: int, key: str, fails: int) -> int:
        if tally.bump(f"{key}:{x}") <= fails:
            raise self.retry(countdown=0.02)
        return x

    @app.task(name="c.on_error")
    def on_error(request: Any, exc: BaseException, traceback: str, key: str) -> None:
        tally.record(key, (request.id, type(exc).__name__, str(exc)))

    @app.task(name="c.record")
    def record(value: Any, key: str) -> None:
        tally.record(key, value)

    @app.task(name="c.replacer", bind=True)
    def replacer(self: Any, x: int, kind: str) -> int:
        if kind == "sig":
            return int(self.replace(add.s(x, 100)))
        if kind == "chain":
            return int(self.replace(add.s(x, 1) | mul.s(10)))
        from celeriac import group

        return int(self.replace(group(add.s(x, i) for i in range(3))))

    @app.task(name="c.waits_inside")
    def waits_inside() -> int:
        return int(add.delay(1, 1).get(timeout=5))

    return {
        t.name.split(".", 1)[1]: t
        for t in (add, mul, xsum, slow_add, boom, collect, flaky, on_error, record, replacer)
    } | {"waits_inside": waits_inside}


def started(kind: str, tmp: Path) -> Iterator[Env]:
    app, cleanup = make_app(kind, tmp)
    tally = Tally()
    tasks = register(app, tally)
    try:
        with start_worker(app, pool="threads", concurrency=4, shutdown_timeout=15) as worker:
            yield Env(kind, app, worker, tally, tasks)
    finally:
        app.close()
        if cleanup is not None:
            cleanup()


def key() -> str:
    return uuid.uuid4().hex
