"""A client's wait for a result key on Redis (``backends/redis_watch.py``, ``redis_line.py``).

Every test runs both ways a ``Watcher`` holds its per-thread connection: the raw RESP3
``WatchLine`` (``line``, taken for plain TCP/Unix URLs) and redis-py's ``PubSub`` (``pubsub``,
the fallback for TLS, Sentinel and servers without RESP3). They run against a private
redis-server this module starts on a free port (stopped by PID; the shared Redis is never
touched), so the tests may read its command statistics and kill its connections. Skipped when
``redis-server`` is not installed (failed under ``CI=true``). The last test also covers the
broker's kept connection (``_internal/redis_pinned.py``) on a server without RESP3.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server_support import RedisServer, wait_until
from thread_support import Background

from celeriac import states
from celeriac._internal.redis_pinned import PinnedConnection
from celeriac.backends.base import ResultBackend
from celeriac.backends.redis import RECHECK_SECONDS, RedisStore
from celeriac.backends.redis_line import WatchLine
from celeriac.backends.redis_watch import Watcher
from celeriac.exceptions import TimeoutError
from celeriac.protocol.result_meta import ResultMeta

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

#: reconnect quickly in these tests (the defaults allow 2 s between attempts)
FAST = {"interval_start": 0.02, "interval_step": 0.05, "interval_max": 0.2}


class PrivateRedis(RedisServer):
    """A redis-server on a free port, without persistence, started at once; ``admin`` is a
    RESP2 client of it, closed by ``stop`` (by PID)."""

    def __init__(self, workdir: Path, *args: str) -> None:
        super().__init__(workdir, *args)
        self.start()
        self.admin = self.client(protocol=2)

    def stop(self) -> None:
        self.admin.close()
        super().stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    instance = PrivateRedis(tmp_path_factory.mktemp("watch-redis"))
    yield instance
    instance.stop()


@pytest.fixture(autouse=True)
def admin(server: PrivateRedis) -> Any:
    """A client of the private server, emptied before each test (it is this module's own)."""
    server.admin.flushdb()
    return server.admin


def open_store(url: str, path: str, **options: Any) -> RedisStore:
    """A store named for ``CLIENT LIST`` whose waits take the ``path`` way."""
    name = f"watch-{uuid.uuid4().hex[:8]}"
    store = RedisStore(url, options={"client_name": name, **FAST, **options})
    if path == "pubsub":
        store._watcher = Watcher(store._client, recheck=RECHECK_SECONDS, raw=False)
    else:
        assert store._watcher.spec is not None
    return store


@pytest.fixture(params=["line", "pubsub"])
def path(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def store(server: PrivateRedis, path: str) -> Iterator[RedisStore]:
    opened = open_store(server.url(), path)
    yield opened
    opened.close()


@pytest.fixture
def writer(server: PrivateRedis) -> Iterator[RedisStore]:
    opened = RedisStore(server.url())
    yield opened
    opened.close()


def connection(store: RedisStore) -> Any:
    """The calling thread's subscribed connection (a ``WatchLine`` or a ``PubSub``)."""
    local = store._watcher._local
    return getattr(local, "line", None) or getattr(local, "pubsub", None)


def subscribed(admin: Any, store: RedisStore) -> list[dict[str, Any]]:
    """The store's connections the server counts a subscription for."""
    name = store.options["client_name"]
    return [c for c in admin.client_list() if c.get("name") == name and int(c["sub"]) > 0]


def listening(admin: Any, key: str) -> bool:
    return bool(admin.pubsub_numsub(key)[0][1])


def calls(admin: Any, command: str) -> int:
    return int(admin.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def success(task_id: str, value: Any = 42) -> ResultMeta:
    return ResultMeta(task_id=task_id, status=states.SUCCESS, result=value, children=[])


# -- get() ---------------------------------------------------------------------------------------
def test_a_ready_result_is_returned_by_the_first_read(
    store: RedisStore, admin: Any, path: str
) -> None:
    backend = ResultBackend(store)
    backend.store_result(success("ready", "early"))
    admin.config_resetstat()
    start = time.monotonic()
    meta = backend.wait_for("ready", timeout=10)
    elapsed = time.monotonic() - start
    assert (meta.status, meta.result) == (states.SUCCESS, "early")
    assert elapsed < 0.5
    # one read of the key, after the subscription (no GET before it)
    assert calls(admin, "get") == 1
    assert calls(admin, "subscribe") == 1
    # the first read comes before the deadline counts: a ready result even with timeout=0
    assert backend.wait_for("ready", timeout=0).result == "early"


def test_a_write_during_the_wait_wakes_it_at_once(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    backend = ResultBackend(store)
    key = backend.key_for("later")
    written: list[float] = []

    def worker() -> None:
        wait_until(lambda: listening(admin, key), 5, "the subscription")
        # re-reads come at 0.05, 0.15, 0.35, 0.75 s: one that found the write would come
        # 0.3 s after it
        time.sleep(0.45)
        written.append(time.monotonic())
        ResultBackend(writer).store_result(success("later", 7))

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert backend.wait_for("later", timeout=10).result == 7
        returned = time.monotonic()
    finally:
        thread.join(10)
    assert returned - written[0] < 0.15, "woken by a re-read, not by the message"


def test_a_timeout_raises_on_time(store: RedisStore) -> None:
    backend = ResultBackend(store)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        backend.wait_for("never", timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 0.8
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        backend.wait_for("never", timeout=0)
    assert time.monotonic() - start < 0.5


def test_a_started_record_then_success(store: RedisStore, writer: RedisStore, admin: Any) -> None:
    backend, other = ResultBackend(store), ResultBackend(writer)
    other.store_result(ResultMeta(task_id="s", status=states.STARTED, children=[]))
    waiter = Background(lambda: backend.wait_for("s", timeout=10))
    wait_until(lambda: listening(admin, backend.key_for("s")), 5, "the subscription")
    other.store_result(success("s", "finished"))
    assert waiter.result(10).result == "finished"


def test_a_delete_during_the_wait_is_seen(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    writer.set("gone", b"x", 60)
    waiter = Background(lambda: store.wait_for_change("gone", b"x", 10.0))
    wait_until(lambda: listening(admin, "gone"), 5, "the subscription")
    deleted = time.monotonic()
    writer.delete(["gone"])  # publishes nothing: seen by a re-read
    assert waiter.result(10) is None
    assert waiter.ended is not None and waiter.ended - deleted < RECHECK_SECONDS + 0.5


def test_an_expiry_during_the_wait_is_seen(store: RedisStore, writer: RedisStore) -> None:
    writer.set("short", b"x", 0.3)
    start = time.monotonic()
    assert store.wait_for_change("short", b"x", 10.0) is None
    assert time.monotonic() - start < 0.3 + RECHECK_SECONDS + 0.5


def test_a_killed_connection_recovers(store: RedisStore, writer: RedisStore, admin: Any) -> None:
    backend = ResultBackend(store)
    waiter = Background(lambda: backend.wait_for("k", timeout=20))
    wait_until(lambda: subscribed(admin, store), 5, "the subscription")
    (first,) = subscribed(admin, store)
    admin.client_kill_filter(_id=first["id"])
    # the wait makes a new connection on its own and subscribes again
    wait_until(
        lambda: [c["id"] for c in subscribed(admin, store)] not in ([], [first["id"]]),
        10,
        "a new subscribed connection",
    )
    ResultBackend(writer).store_result(success("k", "after the kill"))
    assert waiter.result(10).result == "after the kill"


# -- one connection per thread and per process --------------------------------------------------
def test_waits_reuse_one_subscribed_connection_per_thread(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    for i in range(3):
        waiter = Background(lambda i=i: store.wait_for_change(f"k{i}", None, 10.0))
        wait_until(lambda i=i: listening(admin, f"k{i}"), 5, "the subscription")
        writer.set(f"k{i}", b"v%d" % i, 60)
        assert waiter.result(10) == b"v%d" % i
    writer.set("m0", b"w0", 60)
    assert store.wait_for_change("m0", None, 10.0) == b"w0"
    kept = connection(store)
    for i in range(1, 4):
        writer.set(f"m{i}", b"w%d" % i, 60)
        assert store.wait_for_change(f"m{i}", None, 10.0) == b"w%d" % i
        assert connection(store) is kept
    # the last wait's channel stays subscribed until the next wait: one channel, not four
    wait_until(lambda: len(subscribed(admin, store)) == 1, 5, "one subscribed connection")
    (conn,) = subscribed(admin, store)
    assert int(conn["sub"]) == 1
    assert listening(admin, "m3") and not listening(admin, "m0")


def test_a_message_of_an_earlier_key_does_not_end_a_wait_for_another(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    writer.set("first", b"1", 60)
    assert store.wait_for_change("first", None, 10.0) == b"1"
    admin.set("first", b"2")
    admin.publish("first", b"2")  # arrives after the wait for "first" ended
    started = time.monotonic()
    assert store.wait_for_change("second", None, 0.3) is None
    assert time.monotonic() - started >= 0.25


def test_the_same_key_again_keeps_its_subscription(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    writer.set("again", b"1", 60)
    assert store.wait_for_change("again", None, 10.0) == b"1"
    admin.config_resetstat()
    waiter = Background(lambda: store.wait_for_change("again", b"1", 10.0))
    wait_until(lambda: calls(admin, "get") == 1, 5, "the wait's read")
    writer.set("again", b"2", 60)
    assert waiter.result(10) == b"2"


def test_the_value_is_taken_from_the_message(store: RedisStore, admin: Any) -> None:
    waiter = Background(lambda: store.wait_for_change("pub", None, 10.0))
    wait_until(lambda: listening(admin, "pub"), 5, "the subscription")
    admin.publish("pub", b"published")  # a PUBLISH without a SET: no re-read returns it
    assert waiter.result(10) == b"published"


def test_two_threads_wait_at_once_on_their_own_connections(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    connections: dict[int, Any] = {}

    def wait(i: int) -> bytes | None:
        value = store.wait_for_change(f"t{i}", None, 10.0)
        connections[i] = connection(store)
        return value

    waiters = [Background(lambda i=i: wait(i)) for i in range(2)]
    wait_until(lambda: len(subscribed(admin, store)) == 2, 5, "two subscribed connections")
    for i in range(2):
        writer.set(f"t{i}", b"done%d" % i, 60)
    assert [w.result(10) for w in waiters] == [b"done0", b"done1"]
    assert connections[0] is not connections[1]


def test_close_closes_the_subscribed_connections(store: RedisStore, admin: Any) -> None:
    store.set("c", b"x", 60)
    assert store.wait_for_change("c", None, 1.0) == b"x"
    assert len(subscribed(admin, store)) == 1
    store.close()
    wait_until(lambda: not subscribed(admin, store), 5, "the connection closed")


def test_a_forked_child_waits_on_its_own_connection(
    store: RedisStore, writer: RedisStore, admin: Any
) -> None:
    import multiprocessing

    store.set("before", b"x", 60)
    assert store.wait_for_change("before", None, 1.0) == b"x"  # the parent's connection exists
    parent = connection(store)

    def child(queue: Any) -> None:
        queue.put(store.wait_for_change("forked", None, 10.0))

    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    try:
        wait_until(lambda: listening(admin, "forked"), 10, "the child's subscription")
        writer.set("forked", b"from parent", 60)
        process.join(15)
        assert process.exitcode == 0 and queue.get() == b"from parent"
    finally:
        if process.is_alive():
            process.kill()
    # the parent's connection was not touched by the child and still works
    writer.set("after", b"y", 60)
    assert store.wait_for_change("after", None, 5.0) == b"y"
    assert connection(store) is parent


# -- connecting ---------------------------------------------------------------------------------
def test_the_line_authenticates_selects_the_db_and_names_itself(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path, "--requirepass", "s3cret")
    try:
        for auth in (":s3cret@", "default:s3cret@"):
            store = open_store(server.url(3, auth), "line")
            try:
                store.set("k", b"v", 60)
                assert store.wait_for_change("k", None, 5.0) == b"v"
                assert isinstance(connection(store), WatchLine)
                (conn,) = subscribed(server.admin, store)
                assert conn["db"] == "3"
                record = json.dumps({"status": "SUCCESS", "result": 1, "task_id": "a"})
                waiter = Background(lambda store=store: ResultBackend(store).wait_for("a", 5))
                key = "celery-task-meta-a"
                wait_until(lambda key=key: listening(server.admin, key), 5, "the subscription")
                with redis.Redis(port=server.port, password="s3cret", db=3) as db3:
                    db3.set(key, record)
                    db3.publish(key, record)
                    assert waiter.result(10).result == 1
                    db3.delete(key)
            finally:
                store.close()
    finally:
        server.stop()


def test_a_server_without_resp3_keeps_redis_py(tmp_path: Path) -> None:
    # redis-py 8 itself speaks RESP3 unless told otherwise: a RESP2 client, as with Redis < 6
    server = PrivateRedis(tmp_path, "--rename-command", "HELLO", "")
    client = redis.Redis(port=server.port, protocol=2)
    watcher = Watcher(client, recheck=RECHECK_SECONDS)
    pinned = PinnedConnection(client)
    assert watcher.spec is not None and pinned._spec is not None
    try:
        client.set("k", b"v")
        assert watcher.watch("k", None, time.monotonic() + 5) == b"v"
        assert watcher.spec is None  # refused once: PubSub from now on
        waiter = Background(lambda: watcher.watch("k", b"v", time.monotonic() + 10))
        wait_until(lambda: listening(client, "k"), 5, "the subscription")
        client.set("k", b"w")
        client.publish("k", b"w")
        assert waiter.result(10) == b"w"
        # the broker's kept connection falls back to a connection of the pool
        assert pinned.execute("LPUSH", "q", b"m") == 1
        assert pinned._spec is None and pinned.execute("LPUSH", "q", b"n") == 2
    finally:
        pinned.close()
        watcher.close()
        client.close()
        server.stop()
