"""The app on Redis: settings reach the drivers once and keys land where Celery looks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac.protocol.result_meta import ResultMeta

redis = pytest.importorskip("redis")
URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def client() -> Iterator[object]:
    conn = redis.Redis.from_url(URL)
    try:
        conn.ping()
    except redis.ConnectionError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis is not reachable at {URL} (CI=true: servers are required)")
        pytest.skip(f"Redis is not reachable at {URL}")
    yield conn
    conn.close()


def test_global_keyprefix_is_applied_once(client: redis.Redis) -> None:
    prefix = f"celeriac-test-{uuid.uuid4().hex[:8]}:"
    app = Celeriac(
        "prefix",
        broker=URL,
        backend=URL,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    try:

        @app.task(name="t.prefixed")
        def add(x: int, y: int) -> int:
            return x + y

        result = add.delay(1, 2)
        app.backend.store_result(ResultMeta(task_id=result.id, status="SUCCESS", result=3))  # type: ignore[union-attr]
        keys = {k.decode() for k in client.keys(prefix + "*")}
        assert f"{prefix}celery-task-meta-{result.id}" in keys
        assert f"{prefix}celery" in keys  # the queue list, as kombu names it
        assert not any(k.startswith(prefix + prefix) for k in keys)
        assert result.get(timeout=5) == 3
    finally:
        leftovers = client.keys(prefix + "*")
        if leftovers:
            client.delete(*leftovers)
        app.close()
