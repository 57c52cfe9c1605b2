"""Fixtures shared by the Redis integration tests: a client of the test Redis and a key prefix.

The server is ``CELERIAC_TEST_REDIS_URL`` (default DB 9 on 127.0.0.1): a missing server skips the
test locally and fails it under ``CI=true``. Every test gets its own ``global_keyprefix`` and
its keys are deleted afterwards (never FLUSHDB: the server is shared).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def client() -> Iterator[Any]:
    redis = pytest.importorskip("redis")
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        conn.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no Redis at {REDIS_URL}: {exc} (CI=true: servers are required)")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    yield conn
    conn.close()


@pytest.fixture
def prefix(client: Any) -> Iterator[str]:
    value = f"celeriac-test-{uuid.uuid4().hex[:10]}:"
    yield value
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_app(prefix: str, client: Any) -> Iterator[Any]:
    """An app whose broker is the test Redis under this test's key prefix (no backend)."""
    from celeriac import Celeriac

    app = Celeriac(
        "redis-app", broker=REDIS_URL, broker_transport_options={"global_keyprefix": prefix}
    )
    yield app
    app.close()
