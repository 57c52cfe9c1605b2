"""Fixtures of the live interop tests: real Celery beside Celeriac on the real Redis.

* The Celery virtualenvs (``celery_envs.py``) are built once per run, after collection and
  before the first test, only when interop tests were selected; so a first-run build (a minute
  or two) does not count against any test's timeout.
* Redis: ``CELERIAC_TEST_INTEROP_REDIS_URL`` (default ``redis://127.0.0.1:6379/10``, a database
  of its own). Skipped when unreachable, failed under ``CI=true``; the same for a virtualenv
  that cannot be built.
* Every run has its own id; each ``Fleet`` prefixes all its keys with ``interop-<run>-<fleet>``
  (broker and result backend, both sides) and deletes only them.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from celery_envs import CeleryEnv, EnvError, ensure  # noqa: E402
from fleet import REDIS_URL, Client, Fleet  # noqa: E402
from interop_support import BUILT, VERSIONS, Pair, celery_env, unavailable  # noqa: E402


def _is_interop(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).resolve().is_relative_to(HERE)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: live tests against real Celery (tests/interop)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_interop(item):
            item.add_marker(pytest.mark.redis)
            item.add_marker(pytest.mark.interop)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or reuse) the Celery virtualenvs before any test runs, both at once."""
    if not any(_is_interop(item) for item in session.items):
        return

    def build(name: str) -> None:
        try:
            BUILT[name] = ensure(name)
        except EnvError as exc:
            BUILT[name] = exc

    threads = [threading.Thread(target=build, args=(name,)) for name in VERSIONS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for name in VERSIONS:
            env = BUILT[name]
            text = env.describe() if isinstance(env, CeleryEnv) else f"NOT AVAILABLE: {env}"
            reporter.write_line(f"interop celery-{name}: {text}")


@pytest.fixture(scope="session")
def interop_redis() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"no Redis at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def interop_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop-logs")


@pytest.fixture(scope="session")
def fleet(interop_redis: Any, run_id: str, interop_logs: Path) -> Iterator[Fleet]:
    """The shared fleet: one Celeriac worker, one Celery worker and client per version."""
    shared = Fleet("main", run_id, interop_redis, celery_env, interop_logs, visibility_timeout=30)
    yield shared
    shared.close()


DIRECTIONS = [(sender, version) for version in VERSIONS for sender in ("celery", "celeriac")]


def _pair_id(param: tuple[str, str]) -> str:
    sender, version = param
    return f"celery{version}-to-celeriac" if sender == "celery" else f"celeriac-to-celery{version}"


@pytest.fixture(params=DIRECTIONS, ids=[_pair_id(p) for p in DIRECTIONS])
def pair(request: pytest.FixtureRequest, fleet: Fleet) -> Pair:
    """Each direction against each Celery version (4 cases)."""
    sender, version = request.param
    env = celery_env(version)
    if sender == "celery":
        fleet.celeriac_worker()
        client: Client = fleet.celery_client(version)
        worker = "celeriac"
        queue, other = fleet.queue("celeriac"), fleet.other_queue("celeriac")
    else:
        fleet.celery_worker(version)
        client = fleet.celeriac_client(version)
        worker = "celery"
        queue, other = fleet.queue("celery", version), fleet.other_queue("celery", version)
    return Pair(client, worker, version, env.celery_version, queue, other, fleet)
