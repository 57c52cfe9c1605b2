"""The Redis result store against a real Redis, as Celery's clients and workers see it.

Redis URL from ``CELERIAC_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/9``); skipped when
unreachable, failed under ``CI=true``. Each test uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.backends.base import AsyncResultBackend, ResultBackend
from celeriac.backends.redis import AsyncRedisStore, RedisStore
from celeriac.protocol.result_meta import ResultMeta

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "celery-wire"


@pytest.fixture
def store(prefix: str) -> Iterator[RedisStore]:
    opened = RedisStore(URL, options={"global_keyprefix": prefix})
    yield opened
    opened.close()


def test_set_is_setex_plus_publish_on_the_key_named_channel(
    store: RedisStore, client: Any, prefix: str
) -> None:
    key = "celery-task-meta-abc"
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(prefix + key)
    try:
        store.set(key, b'{"status": "SUCCESS"}', 86400)
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
        assert message is not None and message["data"] == b'{"status": "SUCCESS"}'
    finally:
        pubsub.close()
    assert client.get(prefix + key) == b'{"status": "SUCCESS"}'
    assert 86390 <= client.ttl(prefix + key) <= 86400


def test_reads_a_record_written_by_celery(store: RedisStore, client: Any, prefix: str) -> None:
    path = FIXTURES / "result-success.json"
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    captured = json.loads(path.read_text())
    client.execute_command("SETEX", prefix + captured["redis_key"], 86400, captured["raw"])
    task_id = captured["redis_key"].removeprefix("celery-task-meta-")
    meta = ResultBackend(store).get_meta(task_id)
    assert (meta.status, meta.result) == (states.SUCCESS, 5)


def test_wait_is_woken_by_a_celery_style_write(store: RedisStore, client: Any, prefix: str) -> None:
    backend = ResultBackend(store)
    key = prefix + "celery-task-meta-t1"
    record = json.dumps(
        {
            "status": "SUCCESS",
            "result": 7,
            "traceback": None,
            "children": [],
            "date_done": "2026-11-21T23:00:23.477122+00:00",
            "task_id": "t1",
        }
    )

    def celery_worker() -> None:
        with client.pipeline(transaction=True) as pipe:
            pipe.execute_command("SETEX", key, 86400, record)
            pipe.publish(key, record)
            pipe.execute()

    timer = threading.Timer(0.3, celery_worker)
    start = time.monotonic()
    timer.start()
    try:
        meta = backend.wait_for("t1", timeout=10)
    finally:
        timer.cancel()
    assert meta.result == 7
    assert time.monotonic() - start < 2.0  # woken by the PUBLISH, not by the 1 s re-read


def test_success_is_not_overwritten_and_set_many_is_one_multi(store: RedisStore) -> None:
    backend = ResultBackend(store)
    backend.store_result(ResultMeta(task_id="a", status=states.SUCCESS, result=1, children=[]))
    backend.store_many(
        [
            ResultMeta(task_id="a", status=states.FAILURE, result=None, children=[]),
            ResultMeta(task_id="b", status=states.STARTED, result=None, children=[]),
        ]
    )
    assert [m.status for m in backend.get_many(["a", "b"])] == [states.SUCCESS, states.STARTED]
    assert store.incr("counter", 2, 10) == 2


# -- the worker's native async path ------------------------------------------------------------
def success(task_id: str, value: object) -> ResultMeta:
    return ResultMeta(task_id=task_id, status=states.SUCCESS, result=value, children=[])


def test_async_backend_writes_through_the_native_store(
    store: RedisStore, client: Any, prefix: str
) -> None:
    backend = AsyncResultBackend(ResultBackend(store))
    assert isinstance(backend.store, AsyncRedisStore)
    native = backend.store
    reads: list[list[str]] = []
    real_mget = native.mget

    async def counting_mget(keys: Any) -> Any:
        reads.append(list(keys))
        return await real_mget(keys)

    native.mget = counting_mget  # type: ignore[method-assign]
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(prefix + "celery-task-meta-a")

    async def scenario() -> None:
        await backend.store_many([success("a", 1), success("b", 2)])
        assert reads == []  # SUCCESS is written whatever is stored: nothing to read first
        failure = ResultMeta(task_id="a", status=states.FAILURE, result=None, children=[])
        started = ResultMeta(task_id="c", status=states.STARTED, result=None, children=[])
        await backend.store_many([failure, started])
        assert reads == [["celery-task-meta-a", "celery-task-meta-c"]]
        assert (await backend.get_meta("a")).status == states.SUCCESS  # not overwritten
        assert (await backend.get_meta("c")).status == states.STARTED
        assert (await backend.get_meta("missing")).status == states.PENDING
        assert await backend.incr("n", 3) == 3
        assert await backend.cleanup() == 0
        await backend.close()

    try:
        asyncio.run(scenario())
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
        assert message is not None and json.loads(message["data"])["status"] == "SUCCESS"
    finally:
        pubsub.close()
    # the same records through the sync store, which the async backend did not close
    metas = ResultBackend(store).get_many(["a", "b", "c"])
    assert [(m.status, m.result) for m in metas] == [
        (states.SUCCESS, 1),
        (states.SUCCESS, 2),
        (states.STARTED, None),
    ]
    assert 0 < client.pttl(prefix + "celery-task-meta-b") <= 86400 * 1000
    assert client.ttl(prefix + "n") > 0


def test_async_backend_keeps_the_thread_adapter_when_asked_or_unsure(store: RedisStore) -> None:
    class Custom(RedisStore):
        pass

    custom = Custom(store.url, options=store.options)
    for backend in (
        AsyncResultBackend(ResultBackend(store), native=False),
        AsyncResultBackend(ResultBackend(custom)),
    ):
        assert backend.store is None

        async def scenario(backend: AsyncResultBackend = backend) -> ResultMeta:
            await backend.store_many([success("t", "x")])
            meta = await backend.get_meta("t")
            await backend.close()
            return meta

        assert asyncio.run(scenario()).result == "x"
    custom.close()


def test_async_wait_for_change_is_woken_by_a_sync_write(store: RedisStore, prefix: str) -> None:
    async def scenario() -> tuple[bytes | None, float]:
        native = AsyncRedisStore(URL, options={"global_keyprefix": prefix})
        try:
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, lambda: loop.run_in_executor(None, store.set, "k", b"v", 60))
            start = time.monotonic()
            value = await native.wait_for_change("k", None, 10.0)
            return value, time.monotonic() - start
        finally:
            await native.close()

    value, elapsed = asyncio.run(scenario())
    assert value == b"v"
    assert elapsed < 1.0  # the PUBLISH woke it, not the 1 s re-read
