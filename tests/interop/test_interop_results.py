"""Reading each other's results: states, values, failures, retries, custom states, forget.

Four cases per test (``pair``): Celery 5.x/5.3 client with a Celeriac worker, Celeriac client
with Celery 5.x/5.3 workers. The worker writes ``celery-task-meta-<id>``; the client reads it
with its own ``AsyncResult``.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from interop_support import Pair, failed, succeeded, wait_state

pytestmark = [pytest.mark.timeout(90)]

UTC = dt.timezone.utc


def test_builtin_exception(pair: Pair) -> None:
    outcome = failed(pair, pair.client.call("interop.fail", ["value", "boom"]))
    assert outcome.state == "FAILURE"
    assert outcome.exc_type == "builtins.ValueError"
    assert outcome.exc_args == ["boom", 42]
    assert outcome.traceback and "ValueError" in outcome.traceback, outcome.traceback


def test_key_error_message(pair: Pair) -> None:
    outcome = failed(pair, pair.client.call("interop.fail", ["key", "missing"]))
    assert (outcome.exc_type, outcome.exc_args) == ("builtins.KeyError", ["missing"])


def test_custom_exception_type_and_message(pair: Pair) -> None:
    """``exc_module`` = ``interop_exc``, loaded on both sides: the client rebuilds the class."""
    outcome = failed(pair, pair.client.call("interop.fail", ["custom", "custom message"]))
    assert outcome.state == "FAILURE"
    assert outcome.exc_type == "interop_exc.InteropError", outcome
    assert outcome.exc_args == ["custom message", 7]


def test_retry_then_success(pair: Pair) -> None:
    """The task retries (same id, ``retries`` + 1) until a gate opens: the client sees RETRY
    with the exception given to ``retry()``, then SUCCESS."""
    gate = uuid.uuid4().hex
    task_id = pair.client.call("interop.retry_until", [gate])
    info = wait_state(pair, task_id, "RETRY")
    if pair.client.impl == "celery":
        assert isinstance(info, dict) and info["__exception__"]["type"].endswith("KeyError"), info
    else:
        assert isinstance(info, KeyError), f"RETRY info is {info!r}"
    pair.fleet.redis.set(pair.fleet.key(f"interop.gate.{gate}"), "1", ex=600)
    value = succeeded(pair, task_id)
    assert value["impl"] == pair.worker
    assert value["retries"] >= 1


def test_custom_state_from_update_state(pair: Pair) -> None:
    gate = uuid.uuid4().hex
    task_id = pair.client.call("interop.progress", [gate])
    info = wait_state(pair, task_id, "PROGRESS")
    assert info == {"done": 1, "of": 2, "impl": pair.worker}
    pair.fleet.redis.set(pair.fleet.key(f"interop.gate.{gate}"), "1", ex=600)
    assert succeeded(pair, task_id) == "finished"


def test_expired_task_is_revoked(pair: Pair) -> None:
    expires = dt.datetime.now(UTC) - dt.timedelta(seconds=30)
    task_id = pair.client.call("interop.add", [1, 2], expires=expires)
    outcome = pair.client.outcome(task_id, 15)
    assert outcome.state == "REVOKED", f"{pair.describe()}: {outcome}\n{pair.fleet.diagnostics()}"
    assert outcome.exc_type is not None and outcome.exc_type.endswith(".TaskRevokedError"), outcome
    assert outcome.exc_args == ["expired"]


def test_forget(pair: Pair) -> None:
    task_id = pair.client.call("interop.add", [3, 4])
    assert succeeded(pair, task_id) == 7
    key = pair.fleet.result_key(task_id)
    assert pair.fleet.redis.exists(key), f"the result is not at {key!r}"
    pair.client.forget(task_id)
    assert not pair.fleet.redis.exists(key), "forget() left the result in place"
    assert pair.client.state(task_id)[0] == "PENDING"


def test_unknown_task_fails_with_not_registered(pair: Pair) -> None:
    task_id = pair.client.call("interop.nope", [1], how="send_task")
    outcome = failed(pair, task_id)
    assert outcome.state == "FAILURE"
    assert outcome.exc_type is not None and outcome.exc_type.endswith(".NotRegistered"), outcome
    assert "interop.nope" in (outcome.exc_text or ""), outcome


def test_result_record_shape_is_celerys(pair: Pair) -> None:
    """The record both sides write: Celery's keys, an aware ISO ``date_done``."""
    import json

    task_id = pair.client.call("interop.add", [5, 6])
    assert succeeded(pair, task_id) == 11
    record = json.loads(pair.fleet.redis.get(pair.fleet.result_key(task_id)))
    assert {"status", "result", "traceback", "children", "date_done", "task_id"} <= set(record)
    assert (record["status"], record["result"], record["task_id"]) == ("SUCCESS", 11, task_id)
    done = dt.datetime.fromisoformat(record["date_done"])
    assert done.tzinfo is not None or pair.worker == "celery", record["date_done"]
