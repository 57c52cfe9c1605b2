"""The chord join primitive (``KeyValueStore.join_add_many`` and friends) on every store: the
in-process default, memory, SQLite and Redis (Celery 5.7's keys; skipped without a server).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.backends.base import AsyncResultBackend, KeyValueStore, ResultBackend
from celeriac.backends.memory import MemoryStore
from celeriac.backends.sqlite import SQLiteStore
from celeriac.exceptions import ChordError

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


class DictStore(KeyValueStore):
    """A store with only the required primitives: exercises the default join."""

    def __init__(self) -> None:
        super().__init__("dict://")
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        self.data[key] = value

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        value = int(self.data.get(key, b"0")) + amount
        self.data[key] = str(value).encode()
        return value


def redis_prefix() -> Iterator[tuple[str, Any]]:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no Redis at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    prefix = f"celeriac-test-join-{uuid.uuid4().hex[:8]}:"
    yield prefix, client
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["default", "memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    kind = request.param
    if kind == "redis":
        from celeriac.backends.redis import RedisStore

        for prefix, _ in redis_prefix():
            store: KeyValueStore = RedisStore(REDIS_URL, options={"global_keyprefix": prefix})
            yield ResultBackend(store)
            store.close()
        return
    store = {
        "default": DictStore,
        "memory": lambda: MemoryStore(f"memory://join-{uuid.uuid4().hex}"),
        "sqlite": lambda: SQLiteStore(f"sqlite:///{tmp_path / 'results.db'}"),
    }[kind]()
    yield ResultBackend(store)
    store.close()


def add(backend: ResultBackend, gid: str, index: int, value: Any, **kw: Any) -> Any:
    state = kw.pop("state", states.SUCCESS)
    token = kw.pop("token", f"token-{index}")
    part = backend.chord_add(gid, f"task-{index}", index, state, value, token, **kw)
    (joined,) = backend.chord_join_many([part])
    return joined


def test_counts_once_claims_when_full_and_finishes(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    backend.set_chord_size(gid, 3)
    add(backend, gid, 2, "c")
    first = add(backend, gid, 2, "c")  # a redelivery: counted once
    assert (first.count, first.total, first.claimed) == (1, 3, False)
    assert add(backend, gid, 0, "a").count == 2
    last = add(backend, gid, 1, "b")
    assert (last.count, last.total, last.claimed) == (3, 3, True)
    again = add(backend, gid, 1, "b")  # the claimant retrying keeps its claim
    assert again.claimed
    other = add(backend, gid, 0, "a", token="someone-else")
    assert not other.claimed
    assert [value for _, _, value in backend.chord_entries(gid)] == ["a", "b", "c"]
    assert not backend.chord_finish(gid, "someone-else")
    assert backend.chord_finish(gid, "token-1")
    done = add(backend, gid, 0, "a")
    assert (done.count, done.claimed) == (-1, False)


def test_a_new_failure_claims_at_once(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    backend.set_chord_size(gid, 3)
    assert add(backend, gid, 0, 1).claimed is False
    failed = add(backend, gid, 1, ValueError("x"), state=states.FAILURE, claim_now=True)
    assert failed.claimed and failed.count == 2
    entries = backend.chord_entries(gid)
    assert entries[1][1] == states.FAILURE and isinstance(entries[1][2], ValueError)


def test_a_late_failure_of_a_counted_task_does_not(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    backend.set_chord_size(gid, 2)
    add(backend, gid, 0, 1)
    duplicate = add(backend, gid, 0, ValueError(), state=states.FAILURE, claim_now=True)
    assert (duplicate.count, duplicate.claimed) == (1, False)


def test_no_size_no_claim(backend: ResultBackend) -> None:
    joined = add(backend, uuid.uuid4().hex, 0, 1)
    assert (joined.count, joined.total, joined.claimed) == (1, None, False)


def test_the_join_in_order_after_many_adds(backend: ResultBackend) -> None:
    gid = uuid.uuid4().hex
    backend.set_chord_size(gid, 50)
    parts = [backend.chord_add(gid, f"t{i}", i, states.SUCCESS, i, f"k{i}") for i in range(50)]
    joined = backend.chord_join_many(list(reversed(parts)))
    assert [j.claimed for j in joined] == [False] * 49 + [True]
    assert [value for _, _, value in backend.chord_entries(gid)] == list(range(50))


def test_async_backend_joins_the_same_way(backend: ResultBackend) -> None:
    async def scenario() -> list[Any]:
        front = AsyncResultBackend(backend)
        try:
            gid = uuid.uuid4().hex
            await front.set_chord_size(gid, 2)
            parts = [
                backend.chord_add(gid, f"t{i}", i, states.SUCCESS, i * 10, "k") for i in (1, 0)
            ]
            joined = await front.chord_join_many(parts)
            entries = await front.chord_entries(gid)
            finished = await front.chord_finish(gid, "k")
            return [[j.claimed for j in joined], [e[2] for e in entries], finished]
        finally:
            await front.close()

    assert asyncio.run(scenario()) == [[False, True], [0, 10], True]


def test_redis_keys_are_celerys() -> None:
    """``.j`` ZSET of ``[1, id, state, result]`` scored by group_index, ``.d``, ``.s``, then
    ``.c = done``; an entry ZADDed by a Celery 5.3 worker (no ``.d``) is counted too."""
    from celeriac.backends.redis import RedisStore

    for prefix, client in redis_prefix():
        backend = ResultBackend(RedisStore(REDIS_URL, options={"global_keyprefix": prefix}))
        gid = uuid.uuid4().hex
        key = f"{prefix}celery-taskset-meta-{gid}"
        backend.set_chord_size(gid, 3)
        assert client.get(f"{key}.s") == b"3" and 86000 < client.ttl(f"{key}.s") <= 86400
        add(backend, gid, 0, 2)
        member, score = client.zrange(f"{key}.j", 0, -1, withscores=True)[0]
        assert json.loads(member) == [1, "task-0", "SUCCESS", 2] and score == 0.0
        assert client.smembers(f"{key}.d") == {b"task-0:0"}
        client.zadd(f"{key}.j", {json.dumps([1, "celery-53", "SUCCESS", 9]): 1})
        last = add(backend, gid, 2, 4)
        assert (last.count, last.claimed) == (3, True)
        assert [v for _, _, v in backend.chord_entries(gid)] == [2, 9, 4]
        assert backend.chord_finish(gid, "token-2")
        assert client.get(f"{key}.c") == b"done" and client.ttl(f"{key}.c") <= 300
        assert not client.exists(f"{key}.j", f"{key}.s", f"{key}.d")
        backend.close()


def test_chord_error_names_the_dependency() -> None:
    from celeriac.protocol.message import TaskMessage
    from celeriac.worker.chords import ChordPart, _completion

    body = {"task": "t.body", "args": [], "kwargs": {}, "options": {"task_id": "b"}}
    message = TaskMessage(id="h1", task="t.h", group="g", group_index=1, chord=body)
    from celeriac import Celeriac

    app = Celeriac("join", broker="memory://join-err", backend="memory://join-err")
    part = ChordPart(app, "g", "h1", 1, states.FAILURE, ValueError("x"), body, message)
    done = _completion(part, [("h0", states.SUCCESS, 1), ("h1", states.FAILURE, ValueError("x"))])
    assert isinstance(done.error, ChordError)
    assert str(done.error) == "Dependency h1 raised ValueError('x')"
    (meta,) = done.failures
    assert meta.task_id == "b" and meta.status == states.FAILURE
    assert meta.result["exc_type"] == "ChordError"


# -- the worker's batch ------------------------------------------------------------------------
class RecordingTransport:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def publish_many(self, items: Sequence[Any]) -> None:
        self.log.append(f"publish {len(items)}")

    async def ack(self, deliveries: Sequence[Any]) -> None:
        self.log.append("ack")


class RecordingBackend(AsyncResultBackend):
    def __init__(self, log: list[str], fail: int = 0) -> None:
        super().__init__(ResultBackend(MemoryStore(f"memory://join-{uuid.uuid4().hex}")))
        self.log, self.fail = log, fail

    async def store_many(self, metas: Sequence[Any]) -> None:
        self.log.append("store")
        await super().store_many(metas)

    async def chord_join_many(self, adds: Sequence[Any]) -> list[Any]:
        self.log.append("join")
        if self.fail:
            self.fail -= 1
            raise OSError("down")
        return await super().chord_join_many(adds)


def header_part(app: Any, index: int, size: int, group_id: str) -> Any:
    from celeriac.protocol.message import TaskMessage
    from celeriac.worker.chords import ChordPart

    body = {"task": "t.body", "args": [], "kwargs": {}, "options": {"task_id": f"{group_id}-b"}}
    message = TaskMessage(id=f"h{index}", task="t.h", group=group_id, group_index=index, chord=body)
    return ChordPart(app, group_id, f"h{index}", index, states.SUCCESS, index, body, message)


def test_the_batch_joins_after_storing_and_before_acking() -> None:
    from celeriac import Celeriac
    from celeriac.protocol.envelope import RawMessage
    from celeriac.protocol.result_meta import ResultMeta
    from celeriac.transports.base import Delivery
    from celeriac.worker.iobatch import IOBatch
    from celeriac.worker.state import WorkerState

    app = Celeriac("join", broker="memory://join-batch", backend="memory://join-batch")
    log: list[str] = []

    async def main() -> None:
        backend = RecordingBackend(log)
        await backend.set_chord_size("g", 2)
        batch = IOBatch(RecordingTransport(log), backend, WorkerState())  # type: ignore[arg-type]
        batch.publish("celery", RawMessage(b"[]"), None)
        batch.store(ResultMeta(task_id="h0", status=states.SUCCESS, result=0))
        batch.join(header_part(app, 0, 2, "g"))
        batch.join(header_part(app, 1, 2, "g"))
        batch.ack(Delivery("tag", "celery", RawMessage(b"[]")))
        await batch.drain()
        await backend.close()

    asyncio.run(main())
    assert log == ["publish 1", "store", "join", "publish 1", "ack"]  # the body, before the ack


def test_a_join_that_keeps_failing_is_given_up() -> None:
    from celeriac import Celeriac
    from celeriac.worker.chords import JOIN_ATTEMPTS, join_chords

    app = Celeriac("join", broker="memory://join-fail", backend="memory://join-fail")
    log: list[str] = []

    async def main() -> int:
        backend = RecordingBackend(log, fail=10 * JOIN_ATTEMPTS)
        parts = [header_part(app, 0, 1, "g2")]
        raised = 0
        for _ in range(JOIN_ATTEMPTS):
            try:
                await join_chords(parts, backend, RecordingTransport(log))  # type: ignore[arg-type]
            except OSError:
                raised += 1
        await backend.close()
        return raised

    assert asyncio.run(main()) == JOIN_ATTEMPTS - 1
