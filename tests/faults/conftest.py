"""Fixtures of the fault-injection suite (see ``faults_harness``).

- ``broker_kind``: every scenario runs on ``sqlite`` and ``redis``.
- ``fault_env``: a factory ``fault_env(broker_url=None, **settings) -> FaultEnv`` on that broker
  (``broker_url``: a private server instead of the shared one); at teardown it kills every
  process the test started and deletes the test's Redis keys.
- At the end of the session the rows the scenarios recorded are written as a markdown table to
  ``tests/faults/last_run.md`` (gitignored) and printed in the terminal summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_harness import ROWS, FaultEnv, Reaper, make_broker, write_table

BROKERS = ["sqlite", "redis"]


@pytest.fixture(params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "redis":
        request.applymarker(pytest.mark.redis)
    return kind


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    reaper = Reaper()
    yield reaper
    reaper.reap()


@pytest.fixture
def fault_env(
    tmp_path: Path, broker_kind: str, reaper: Reaper
) -> Iterator[Callable[..., FaultEnv]]:
    envs: list[FaultEnv] = []

    def make(*, broker_url: str | None = None, **conf: Any) -> FaultEnv:
        """An environment on ``broker_kind``; ``broker_url``: a private server instead."""
        broker = make_broker(broker_kind, tmp_path, url=broker_url)
        env = FaultEnv(tmp_path, broker, reaper, **conf)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ROWS:
        text = write_table(ROWS)
        terminalreporter.write_sep("=", "fault-injection results (tests/faults/last_run.md)")
        terminalreporter.write(text)
