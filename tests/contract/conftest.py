"""Fixtures for the contract suites: every driver registered here runs every contract test.

Registering a driver
    Add an entry to ``TRANSPORT_FACTORIES`` (broker) and/or ``STORE_FACTORIES`` (result store):
    ``name -> factory``.

    - A transport factory is called as ``factory(tmp_path, lease_seconds=...)`` and returns an
      open ``Transport``; a store factory is called as ``factory(tmp_path)`` and returns an open
      ``KeyValueStore``.
    - Calling a factory again with the *same* ``tmp_path`` must return another connection to the
      *same* broker/store (the suites use a second connection as a second client or worker).
      Different ``tmp_path`` values must be isolated from each other (``tmp_path`` is unique per
      test), so every test starts empty.
    - A driver whose module is not written yet is skipped (``_need_module``). A driver needing a
      server calls ``server_unavailable(reason)`` when it cannot reach it: the test is skipped
      locally and FAILS under ``CI=true``. Marks per driver go in ``DRIVER_MARKS``.

    The fixtures close every connection they handed out at teardown (``close`` is idempotent).

The sqlite and redis entries below are active as soon as ``celeriac.transports.sqlite`` /
``celeriac.backends.sqlite`` / ``celeriac.transports.redis`` / ``celeriac.backends.redis`` exist.
Redis runs against ``CELERIAC_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/9``), never
flushed: each test gets its own ``global_keyprefix``, and the run's keys are deleted at the end.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from celeriac.backends.base import KeyValueStore
from celeriac.transports.base import Transport


class TransportFactory(Protocol):
    def __call__(self, tmp_path: Path, *, lease_seconds: float) -> Transport: ...


class StoreFactory(Protocol):
    def __call__(self, tmp_path: Path) -> KeyValueStore: ...


def server_unavailable(reason: str) -> None:
    """Skip the test locally, fail it under ``CI=true`` (a CI job must have its servers)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: servers are required)")
    pytest.skip(reason)


def _need_module(module: str) -> None:
    """Skip when the driver module is not written yet (an existing but broken one fails)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")


# -- memory ------------------------------------------------------------------------------------
def memory_transport(tmp_path: Path, *, lease_seconds: float) -> Transport:
    from celeriac.transports.memory import MemoryTransport

    return MemoryTransport(f"memory://contract{tmp_path}", lease_seconds=lease_seconds)


def memory_store(tmp_path: Path) -> KeyValueStore:
    from celeriac.backends.memory import MemoryStore

    return MemoryStore(f"memory://contract{tmp_path}")


# -- sqlite ------------------------------------------------------------------------------------
def sqlite_transport(tmp_path: Path, *, lease_seconds: float) -> Transport:
    _need_module("celeriac.transports.sqlite")
    from celeriac.transports.urls import create_transport

    return create_transport(f"sqlite:///{tmp_path}/broker.db", lease_seconds=lease_seconds)


def sqlite_store(tmp_path: Path) -> KeyValueStore:
    _need_module("celeriac.backends.sqlite")
    from celeriac.backends.urls import create_store

    return create_store(f"sqlite:///{tmp_path}/results.db")


# -- redis -------------------------------------------------------------------------------------
_REDIS_LOCK = threading.Lock()
_REDIS_STATE: dict[str, Any] = {"probed": None, "prefixes": {}}
#: never FLUSHDB a shared server: every test gets its own global_keyprefix, deleted afterwards
_REDIS_RUN = f"celeriac-test-{os.getpid()}-{int(time.time())}"


def redis_url(tmp_path: Path) -> str:
    """The test Redis URL (skips/fails when absent); isolation is by ``redis_prefix``."""
    url = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
    with _REDIS_LOCK:
        if _REDIS_STATE["probed"] is None:
            _REDIS_STATE["probed"] = _probe_redis(url)
        problem = _REDIS_STATE["probed"]
    if problem:
        server_unavailable(problem)
    return url


def redis_prefix(tmp_path: Path) -> str:
    """A key prefix unique to this test (``tmp_path``), so every test starts empty."""
    with _REDIS_LOCK:
        prefixes: dict[Path, str] = _REDIS_STATE["prefixes"]
        return prefixes.setdefault(tmp_path, f"{_REDIS_RUN}-{len(prefixes)}:")


@pytest.fixture(scope="session", autouse=True)
def _delete_redis_test_keys() -> Iterator[None]:
    yield
    if not _REDIS_STATE["prefixes"] or _REDIS_STATE["probed"]:
        return
    import redis

    url = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
    with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
        for key in client.scan_iter(match=f"{_REDIS_RUN}-*", count=1000):
            client.delete(key)


def _probe_redis(url: str) -> str:
    """ "" when Redis answers at ``url``, else why not."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'celeriac[redis]')"
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            client.ping()
    except redis.RedisError as exc:
        return f"no Redis at {url}: {exc}"
    return ""


def redis_transport(tmp_path: Path, *, lease_seconds: float) -> Transport:
    _need_module("celeriac.transports.redis")
    from celeriac.transports.urls import create_transport

    options = {"global_keyprefix": redis_prefix(tmp_path)}
    return create_transport(redis_url(tmp_path), lease_seconds=lease_seconds, options=options)


def redis_store(tmp_path: Path) -> KeyValueStore:
    _need_module("celeriac.backends.redis")
    from celeriac.backends.urls import create_store

    return create_store(redis_url(tmp_path), options={"global_keyprefix": redis_prefix(tmp_path)})


# -- registries --------------------------------------------------------------------------------
TRANSPORT_FACTORIES: dict[str, TransportFactory] = {
    "memory": memory_transport,
    "sqlite": sqlite_transport,
    "redis": redis_transport,
}

STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "redis": redis_store,
}

#: extra marks per driver name (``pytest -m "not redis"`` deselects the Redis runs)
DRIVER_MARKS: dict[str, list[pytest.MarkDecorator]] = {"redis": [pytest.mark.redis]}

#: the lease a plain ``transport`` gets: long enough that no test sees it run out by accident
DEFAULT_TEST_LEASE = 30.0


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(name, marks=DRIVER_MARKS.get(name, []), id=name) for name in names]


# -- fixtures ----------------------------------------------------------------------------------
MakeTransport = Callable[..., Transport]
MakeStore = Callable[[], KeyValueStore]


@pytest.fixture(params=_params(list(TRANSPORT_FACTORIES)))
def make_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeTransport]:
    """``make_transport(lease_seconds=30.0)``: another connection to this test's broker."""
    factory = TRANSPORT_FACTORIES[request.param]
    opened: list[Transport] = []

    def make(lease_seconds: float = DEFAULT_TEST_LEASE) -> Transport:
        transport = factory(tmp_path, lease_seconds=lease_seconds)
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(make_transport: MakeTransport) -> Transport:
    return make_transport()


@pytest.fixture(params=_params(list(STORE_FACTORIES)))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """``make_store()``: another connection to this test's store."""
    factory = STORE_FACTORIES[request.param]
    opened: list[KeyValueStore] = []

    def make() -> KeyValueStore:
        store = factory(tmp_path)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> KeyValueStore:
    return make_store()


# -- helpers shared by the suites --------------------------------------------------------------
class Waiter:
    """Runs ``func`` on a daemon thread; ``wait(timeout)`` says whether it finished."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.done = threading.Event()
        self.elapsed = 0.0
        self._func = func
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.started.wait(5), "waiter thread did not start"

    def _run(self) -> None:
        self.started.set()
        start = time.monotonic()
        try:
            self.result = self._func()
        except BaseException as exc:  # re-raised by value()
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - start
            self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def value(self, timeout: float = 10.0) -> Any:
        assert self.done.wait(timeout), f"call did not finish within {timeout} s"
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def background() -> Iterator[Callable[[Callable[[], Any]], Waiter]]:
    """``background(func)``: run ``func`` on a thread now; returns its ``Waiter``."""
    waiters: list[Waiter] = []

    def start(func: Callable[[], Any]) -> Waiter:
        waiter = Waiter(func)
        waiters.append(waiter)
        return waiter

    yield start
    # a test that failed half-way may leave a call blocked: give it a moment, then move on
    # (the threads are daemons and keep any error to themselves)
    deadline = time.monotonic() + 2.0
    for waiter in waiters:
        waiter.wait(max(0.0, deadline - time.monotonic()))
