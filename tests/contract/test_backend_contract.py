"""The result-backend contract, run against every registered store, at two levels:

- ``KeyValueStore`` primitives (what a driver implements);
- ``ResultBackend`` on top (Celery's records, written once in ``backends.base``).

Waits are deadlines on events or on the store's own blocking calls, never plain sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from celeriac import states
from celeriac._internal.timeutils import utcnow
from celeriac.backends.base import AsyncResultBackend, KeyValueStore, ResultBackend
from celeriac.exceptions import TimeoutError
from celeriac.protocol.result_meta import ResultMeta

MakeStore = Callable[[], KeyValueStore]
Background = Callable[[Callable[[], Any]], Any]

SOON = 5.0


def gone_within(store: KeyValueStore, key: str, timeout: float = SOON) -> bool:
    """Whether ``key`` reads as missing before ``timeout`` (each wait blocks on the store)."""
    deadline = time.monotonic() + timeout
    value = store.get(key)
    while value is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        value = store.wait_for_change(key, value, min(remaining, 0.25))
    return True


# == KeyValueStore ==============================================================================
def test_get_set_overwrite(store: KeyValueStore) -> None:
    assert store.get("k") is None
    store.set("k", b"v1", None)
    assert store.get("k") == b"v1"
    store.set("k", b"v2", None)
    assert store.get("k") == b"v2"
    store.set("bin", bytes(range(256)), None)
    assert store.get("bin") == bytes(range(256))


def test_mget_keeps_order_and_reports_missing(store: KeyValueStore) -> None:
    store.set_many([("a", b"1", None), ("c", b"3", None)])
    assert store.mget(["c", "missing", "a"]) == [b"3", None, b"1"]
    assert store.mget([]) == []


def test_set_many(store: KeyValueStore) -> None:
    store.set_many([(f"k{i}", f"v{i}".encode(), None) for i in range(10)])
    store.set_many([])
    assert store.mget([f"k{i}" for i in range(10)]) == [f"v{i}".encode() for i in range(10)]


def test_delete(store: KeyValueStore) -> None:
    store.set_many([("a", b"1", None), ("b", b"2", None), ("c", b"3", None)])
    store.delete(["a", "b", "never-there"])
    store.delete([])
    assert store.mget(["a", "b", "c"]) == [None, None, b"3"]


def test_connections_share_the_store(make_store: MakeStore) -> None:
    writer, reader = make_store(), make_store()
    writer.set("k", b"v", None)
    assert reader.get("k") == b"v"


def test_incr(store: KeyValueStore) -> None:
    assert store.incr("n") == 1
    assert store.incr("n") == 2
    assert store.incr("n", 5) == 7
    assert store.incr("n", -3) == 4
    assert int(store.get("n") or b"") == 4
    assert store.incr("other", 10) == 10


def test_incr_is_atomic_under_threads(make_store: MakeStore) -> None:
    threads, per_thread = 8, 100
    barrier = threading.Barrier(threads)
    results: list[int] = []
    lock = threading.Lock()

    def bump(store: KeyValueStore) -> None:
        barrier.wait(SOON)
        seen = [store.incr("counter") for _ in range(per_thread)]
        with lock:
            results.extend(seen)

    workers = [
        threading.Thread(target=bump, args=(make_store(),), daemon=True) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(15)
    assert not any(worker.is_alive() for worker in workers)
    assert sorted(results) == list(range(1, threads * per_thread + 1))
    assert int(make_store().get("counter") or b"") == threads * per_thread


def test_set_with_expiry(store: KeyValueStore) -> None:
    store.set("short", b"v", 0.3)
    store.set("forever", b"v", None)
    store.set("long", b"v", 3600)
    assert store.get("short") == b"v"
    start = time.monotonic()
    assert gone_within(store, "short")
    assert time.monotonic() - start >= 0.15
    assert store.mget(["short", "forever", "long"]) == [None, b"v", b"v"]


def test_incr_with_expiry(store: KeyValueStore) -> None:
    assert store.incr("n", 1, 0.3) == 1
    assert store.incr("n", 1, 0.3) == 2
    assert gone_within(store, "n")
    assert store.incr("n", 1, 0.3) == 1


def test_overwrite_without_expiry_clears_it(store: KeyValueStore) -> None:
    store.set("k", b"old", 0.3)
    store.set("k", b"new", None)
    store.set("marker", b"m", 0.3)
    assert gone_within(store, "marker")
    assert store.get("k") == b"new"


def test_cleanup_removes_expired_only(store: KeyValueStore) -> None:
    store.set("short", b"v", 0.2)
    store.set("long", b"v", 3600)
    store.set("forever", b"v", None)
    assert gone_within(store, "short")
    removed = store.cleanup()
    assert isinstance(removed, int) and removed >= 0
    assert store.mget(["short", "long", "forever"]) == [None, b"v", b"v"]


def test_wait_for_change_returns_at_once_when_already_different(store: KeyValueStore) -> None:
    store.set("k", b"v2", None)
    start = time.monotonic()
    assert store.wait_for_change("k", b"v1", 10.0) == b"v2"
    assert store.wait_for_change("missing", b"v1", 10.0) is None
    assert time.monotonic() - start < 1.0


def test_wait_for_change_times_out_with_current_value(store: KeyValueStore) -> None:
    store.set("k", b"same", None)
    start = time.monotonic()
    assert store.wait_for_change("k", b"same", 0.3) == b"same"
    assert store.wait_for_change("missing", None, 0.2) is None
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 4.0


def test_wait_for_change_is_woken_by_a_set_from_another_thread(
    make_store: MakeStore, background: Background
) -> None:
    watcher, writer = make_store(), make_store()
    waiter = background(lambda: watcher.wait_for_change("k", None, 10.0))
    assert not waiter.wait(0.2), "wait_for_change returned although nothing changed"
    writer.set("k", b"done", None)
    assert waiter.value(SOON) == b"done"
    assert waiter.elapsed < SOON


def test_wait_for_change_sees_a_delete(make_store: MakeStore, background: Background) -> None:
    watcher, writer = make_store(), make_store()
    writer.set("k", b"v", None)
    waiter = background(lambda: watcher.wait_for_change("k", b"v", 10.0))
    assert not waiter.wait(0.2), "wait_for_change returned although nothing changed"
    writer.delete(["k"])
    assert waiter.value(SOON) is None


def test_store_close_is_idempotent(make_store: MakeStore) -> None:
    store = make_store()
    store.close()
    store.close()
    assert isinstance(store.describe(), str)


def test_async_backend_incr(store: KeyValueStore) -> None:
    backend = AsyncResultBackend(ResultBackend(store))

    async def scenario() -> list[int]:
        counts = [await backend.incr("chord-counter") for _ in range(3)]
        counts.append(await backend.incr("chord-counter", 7))
        await backend.close()
        return counts

    assert asyncio.run(scenario()) == [1, 2, 3, 10]


# == ResultBackend (needs protocol.serialization and protocol.result_meta) ======================
@pytest.fixture
def backend(store: KeyValueStore) -> ResultBackend:
    return ResultBackend(store)


def success(task_id: str, result: Any = 42, **fields: Any) -> ResultMeta:
    return ResultMeta(
        task_id=task_id, status=states.SUCCESS, result=result, date_done=utcnow(), **fields
    )


def failure(task_id: str) -> ResultMeta:
    exc = {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}
    return ResultMeta(task_id=task_id, status=states.FAILURE, result=exc, date_done=utcnow())


def started(task_id: str) -> ResultMeta:
    return ResultMeta(task_id=task_id, status=states.STARTED, result={"pid": 1})


def test_missing_task_is_pending(backend: ResultBackend) -> None:
    meta = backend.get_meta("nope")
    assert (meta.task_id, meta.status, meta.result) == ("nope", states.PENDING, None)


def test_store_and_get_success(backend: ResultBackend) -> None:
    backend.store_result(success("t1", {"answer": [1, 2, "x"]}))
    meta = backend.get_meta("t1")
    assert (meta.task_id, meta.status) == ("t1", states.SUCCESS)
    assert meta.result == {"answer": [1, 2, "x"]}
    assert isinstance(meta.date_done, datetime)
    assert backend.store.get(backend.key_for("t1")) is not None
    assert backend.key_for("t1") == "celery-task-meta-t1"


def test_store_and_get_failure(backend: ResultBackend) -> None:
    backend.store_result(failure("t1"))
    meta = backend.get_meta("t1")
    assert meta.status == states.FAILURE
    assert meta.result["exc_type"] == "ValueError"
    assert list(meta.result["exc_message"]) == ["bad"]


def test_get_many_keeps_order(backend: ResultBackend) -> None:
    backend.store_many([success("a", 1), success("c", 3)])
    backend.store_many([])
    metas = backend.get_many(["c", "b", "a"])
    assert [(m.task_id, m.status, m.result) for m in metas] == [
        ("c", states.SUCCESS, 3),
        ("b", states.PENDING, None),
        ("a", states.SUCCESS, 1),
    ]


def test_success_is_never_overwritten(backend: ResultBackend) -> None:
    backend.store_result(success("t1", "first"))
    backend.store_result(started("t1"))
    backend.store_result(failure("t1"))
    backend.store_many([started("t1"), success("other")])
    assert (backend.get_meta("t1").status, backend.get_meta("t1").result) == (
        states.SUCCESS,
        "first",
    )
    assert backend.get_meta("other").status == states.SUCCESS


def test_unready_states_are_overwritten(backend: ResultBackend) -> None:
    backend.store_result(started("t1"))
    assert backend.get_meta("t1").status == states.STARTED
    backend.store_result(failure("t1"))
    assert backend.get_meta("t1").status == states.FAILURE
    backend.store_result(success("t1", "retried"))
    assert backend.get_meta("t1").result == "retried"


def test_forget(backend: ResultBackend) -> None:
    backend.store_result(success("t1"))
    backend.forget("t1")
    assert backend.get_meta("t1").status == states.PENDING


def test_wait_for_a_ready_state(make_store: MakeStore, background: Background) -> None:
    waiting, worker = ResultBackend(make_store()), ResultBackend(make_store())
    waiter = background(lambda: waiting.wait_for("t1", timeout=10.0))
    assert not waiter.wait(0.2), "wait_for returned before the task finished"
    worker.store_result(started("t1"))
    assert not waiter.wait(0.2), "wait_for returned on a state that is not ready"
    worker.store_result(success("t1", "done"))
    meta = waiter.value(SOON)
    assert (meta.status, meta.result) == (states.SUCCESS, "done")
    assert waiter.elapsed < SOON


def test_wait_for_returns_at_once_when_ready(backend: ResultBackend) -> None:
    backend.store_result(failure("t1"))
    start = time.monotonic()
    assert backend.wait_for("t1", timeout=10.0).status == states.FAILURE
    assert time.monotonic() - start < 1.0


def test_wait_for_reads_once_before_the_deadline_counts(backend: ResultBackend) -> None:
    backend.store_result(success("t1", "ready"))
    assert backend.wait_for("t1", timeout=0).result == "ready"
    backend.store_result(started("t2"))
    start = time.monotonic()
    for task_id in ("t2", "missing"):
        with pytest.raises(TimeoutError):
            backend.wait_for(task_id, timeout=0)
    assert time.monotonic() - start < 1.0


def test_wait_for_times_out(backend: ResultBackend) -> None:
    backend.store_result(started("t1"))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        backend.wait_for("t1", timeout=0.3)
    with pytest.raises(TimeoutError):
        backend.wait_for("missing", timeout=0.2)
    assert 0.4 <= time.monotonic() - start < 4.0


def test_results_expire(store: KeyValueStore) -> None:
    backend = ResultBackend(store, expires=0.3)
    backend.store_result(success("t1"))
    assert backend.get_meta("t1").status == states.SUCCESS
    assert gone_within(store, backend.key_for("t1"))
    assert backend.get_meta("t1").status == states.PENDING


def test_key_prefix(store: KeyValueStore) -> None:
    backend = ResultBackend(store, key_prefix="app1:")
    backend.store_result(success("t1"))
    assert store.get("app1:celery-task-meta-t1") is not None
    assert ResultBackend(store).get_meta("t1").status == states.PENDING


def test_save_and_restore_group(backend: ResultBackend) -> None:
    assert backend.restore_group("g1") is None
    backend.save_group("g1", ["t1", "t2", "t3"])
    assert backend.restore_group("g1") == ["t1", "t2", "t3"]
    assert backend.store.get(backend.group_key_for("g1")) is not None
    backend.delete_group("g1")
    assert backend.restore_group("g1") is None


def test_async_backend_store_and_get(store: KeyValueStore) -> None:
    backend = AsyncResultBackend(ResultBackend(store))

    async def scenario() -> ResultMeta:
        await backend.store_many([success("t1", [1, 2])])
        await backend.store_many([])
        meta = await backend.get_meta("t1")
        assert await backend.cleanup() >= 0
        await backend.close()
        return meta

    meta = asyncio.run(scenario())
    assert (meta.status, meta.result) == (states.SUCCESS, [1, 2])
