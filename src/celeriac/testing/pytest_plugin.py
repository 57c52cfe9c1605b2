"""A pytest plugin with Celery's fixture shapes, for testing code that uses Celeriac.

Enable it with ``pytest_plugins = ["celeriac.testing.pytest_plugin"]`` in a ``conftest.py``.

- ``celeriac_config`` (override it to return settings): defaults to a private in-memory broker
  and result store, so tests need no server and never share state.
- ``celeriac_app``: an app with that configuration, closed after the test.
- ``celeriac_worker``: a worker running ``celeriac_app``'s tasks in a background thread, started
  before the test and stopped (warm shutdown) after it. Define tasks before requesting it, or use
  ``celeriac_app.task`` in the test and send them after the worker started: the worker looks
  tasks up when messages arrive.
- ``celeriac_eager_app``: an app in eager mode (``task_always_eager``), tasks run inline.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac.app.base import Celeriac


@pytest.fixture
def celeriac_config() -> dict[str, Any]:
    """Settings for ``celeriac_app``: override this fixture to change them."""
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    return {"broker_url": f"memory://{name}", "result_backend": f"memory://{name}"}


@pytest.fixture
def celeriac_worker_parameters() -> dict[str, Any]:
    """Keyword arguments for ``start_worker`` (pool, concurrency, queues...): override it."""
    return {"pool": "threads", "concurrency": 2}


@pytest.fixture
def celeriac_app(celeriac_config: dict[str, Any]) -> Iterator[Celeriac]:
    app = Celeriac("pytest", **celeriac_config)
    yield app
    app.close()


@pytest.fixture
def celeriac_eager_app(celeriac_config: dict[str, Any]) -> Iterator[Celeriac]:
    app = Celeriac(
        "pytest-eager", task_always_eager=True, task_eager_propagates=True, **celeriac_config
    )
    yield app
    app.close()


@pytest.fixture
def celeriac_worker(
    celeriac_app: Celeriac, celeriac_worker_parameters: dict[str, Any]
) -> Iterator[Any]:
    from celeriac.testing.worker import start_worker

    with start_worker(celeriac_app, **celeriac_worker_parameters) as worker:
        yield worker
