"""The pytest plugin's fixtures (loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

from typing import Any

from celeriac import Celeriac, states


def test_worker_fixture_runs_tasks(celeriac_app: Celeriac, celeriac_worker: Any) -> None:
    @celeriac_app.task
    def add(x: int, y: int) -> int:
        return x + y

    @celeriac_app.task
    def fail() -> None:
        raise ValueError("boom")

    assert add.delay(1, 2).get(timeout=10) == 3
    result = fail.delay()
    assert isinstance(result.get(timeout=10, propagate=False), ValueError)
    assert result.state == states.FAILURE


def test_eager_app_runs_inline(celeriac_eager_app: Celeriac) -> None:
    @celeriac_eager_app.task
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul.delay(3, 4).get() == 12


def test_config_fixture_isolates_apps(celeriac_app: Celeriac) -> None:
    assert celeriac_app.transport_url.startswith("memory://pytest-")
    assert celeriac_app.transport.qsize("celery") == 0
