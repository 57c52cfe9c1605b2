"""Helpers shared by the interop test modules (the fixtures are in ``conftest.py``).

``celery_env(name)`` gives a built Celery virtualenv (skipped locally, failed under CI=true when
it cannot be had); ``Pair`` is one direction of one scenario; ``succeeded``/``failed``/
``wait_state`` wait on a task through the pair's client with clear failure messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from celery_envs import ENVS, CeleryEnv, EnvError, ensure
from fleet import Client, Fleet, Outcome, wait_until

VERSIONS = list(ENVS)  # "5.x" (newest), "5.3"
VERSION_IDS = [f"celery{v}" for v in VERSIONS]
CI = os.environ.get("CI", "").lower() == "true"

#: name -> the built environment or why it could not be built (filled by conftest's
#: pytest_collection_finish, else on first use)
BUILT: dict[str, CeleryEnv | EnvError] = {}


def unavailable(message: str) -> None:
    """Skip the test, or fail it under CI=true (servers and environments are required there)."""
    if CI:
        pytest.fail(f"{message} (CI=true: required)")
    pytest.skip(message)


def celery_env(name: str) -> CeleryEnv:
    env = BUILT.get(name)
    if env is None:
        try:
            env = BUILT[name] = ensure(name)
        except EnvError as exc:
            env = BUILT[name] = exc
    if isinstance(env, EnvError):
        unavailable(f"Celery {name} virtualenv unavailable: {env}")
    assert isinstance(env, CeleryEnv)
    return env


@dataclass
class Pair:
    """One direction of one scenario: ``client`` sends, a worker of the other kind runs."""

    client: Client
    worker: str  # "celery" | "celeriac"
    version: str  # the Celery side's environment name
    celery_version: str  # its real version, e.g. "5.7.0"
    queue: str
    other_queue: str
    fleet: Fleet

    def describe(self) -> str:
        return f"{self.client.label} client -> {self.worker} worker"


def show(outcome: Outcome) -> str:
    if outcome.timed_out:
        return f"still {outcome.state} after the timeout"
    if outcome.exc_type:
        return f"{outcome.state}: {outcome.exc_type}{tuple(outcome.exc_args)!r}"
    return f"{outcome.state}: {outcome.value!r}"


def succeeded(pair: Pair, task_id: str, timeout: float = 15.0) -> Any:
    """The task's value as the client reads it; a clear failure otherwise."""
    outcome = pair.client.outcome(task_id, timeout)
    if outcome.timed_out or outcome.state != "SUCCESS":
        raise AssertionError(
            f"{pair.describe()}: task {task_id} did not succeed: {show(outcome)}\n"
            f"{pair.fleet.diagnostics()}"
        )
    return outcome.value


def failed(pair: Pair, task_id: str, timeout: float = 15.0) -> Outcome:
    outcome = pair.client.outcome(task_id, timeout)
    assert outcome.exc_type is not None, (
        f"{pair.describe()}: expected a failure, got {show(outcome)}\n{pair.fleet.diagnostics()}"
    )
    return outcome


def wait_state(pair: Pair, task_id: str, state: str, timeout: float = 15.0) -> object:
    """The ``info`` of ``task_id`` once the client sees ``state``."""
    seen: list[tuple[str, object]] = []

    def reached() -> bool:
        seen.append(pair.client.state(task_id))
        return seen[-1][0] == state

    wait_until(
        reached,
        timeout,
        f"{pair.describe()}: task {task_id} in state {state} (last seen: {seen[-1:]})",
        pair.fleet.diagnostics,
    )
    return seen[-1][1]
