"""Bad input never stops the worker: one ERROR line, a dead letter, and the next task runs."""

from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac.exceptions import NotRegistered, WorkerLostError
from celeriac.protocol.envelope import RawMessage
from celeriac.testing.worker import start_worker
from celeriac.transports.base import DeadLetter


@pytest.fixture
def add(app: Celeriac) -> Any:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    return add


def dead_letters(app: Celeriac, count: int, timeout: float = 5.0) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout
    while True:
        letters = app.transport.dead_letters()
        if len(letters) >= count or time.monotonic() > deadline:
            return letters
        time.sleep(0.005)


def worker_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("celeriac.worker") and r.levelno >= logging.ERROR
    ]


def test_undecodable_message_then_a_good_task(
    app: Celeriac, add: Any, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = str(uuid.uuid4())
    garbage = RawMessage(b"\x00not json{", headers={"id": task_id, "task": "t.add"})
    with start_worker(app, concurrency=1) as worker:
        app.transport.publish("celery", garbage)
        assert add.delay(2, 3).get(timeout=5) == 5
        (letter,) = dead_letters(app, 1)
    assert letter.queue == "celery"
    assert letter.reason.startswith("undecodable message")
    assert worker.state.dead_lettered == 1
    (record,) = worker_errors(caplog)
    line = record.getMessage()
    assert "\n" not in line
    assert task_id in line and "t.add" in line and "undecodable" in line
    assert record.__dict__["task_id"] == task_id


def test_unknown_task_is_dead_lettered_with_not_registered(
    app: Celeriac, add: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with start_worker(app) as worker:
        result = app.send_task("t.nope", (1,))
        with pytest.raises(NotRegistered):
            result.get(timeout=5)
        assert add.delay(1, 1).get(timeout=5) == 2
        (letter,) = dead_letters(app, 1)
    assert "unknown task 't.nope'" in letter.reason
    assert worker.state.dead_lettered == 1
    (record,) = worker_errors(caplog)
    assert result.id in record.getMessage() and "t.nope" in record.getMessage()


def test_wrong_arguments_are_dead_lettered(app: Celeriac, add: Any) -> None:
    with start_worker(app):
        result = app.send_task("t.add", (1, 2, 3))
        with pytest.raises(TypeError):
            result.get(timeout=5)
        (letter,) = dead_letters(app, 1)
        assert letter.reason.startswith("wrong arguments: t.add(")
        assert add.delay(1, 2).get(timeout=5) == 3


def test_oversized_message(app: Celeriac, add: Any) -> None:
    app.conf.worker_max_message_size = 1000
    with start_worker(app) as worker:
        too_big = add.delay("x" * 2000, "y")
        assert add.delay(1, 2).get(timeout=5) == 3
        (letter,) = dead_letters(app, 1)
        assert "exceeds worker_max_message_size (1000 bytes)" in letter.reason
        assert too_big.state == states.PENDING
        assert worker.state.dead_lettered == 1


def test_pickle_is_not_accepted_by_default(app: Celeriac, add: Any) -> None:
    headers = {"id": str(uuid.uuid4()), "task": "t.add", "lang": "py"}
    message = RawMessage(
        pickle.dumps(((1, 2), {}, {})),
        content_type="application/x-python-serialize",
        content_encoding="binary",
        headers=headers,
    )
    with start_worker(app):
        app.transport.publish("celery", message)
        (letter,) = dead_letters(app, 1)
        assert "'application/x-python-serialize' is not accepted" in letter.reason
        assert add.delay(1, 2).get(timeout=5) == 3


def test_poison_message_is_dead_lettered_with_worker_lost(app: Celeriac, add: Any) -> None:
    app.conf.broker_transport_options = {"visibility_timeout": 0.1}
    app.conf.broker_max_deliveries = 2
    result = add.delay(1, 2)
    transport = app.transport
    for _ in range(2):  # two deliveries whose consumer "died" (never acked)
        (delivery,) = transport.fetch(["celery"], 1, timeout=5)
    # the worker's fetch gets it when the second lease runs out (the broker wakes it)
    with start_worker(app) as worker:
        with pytest.raises(WorkerLostError, match="delivered 3 times"):
            result.get(timeout=5)
        (letter,) = dead_letters(app, 1)
        assert letter.delivery_count == 3
        assert worker.state.processed == 0
    assert delivery.delivery_count == 2


def test_celery_protocol_v1_message_runs(app: Celeriac, add: Any) -> None:
    task_id = str(uuid.uuid4())
    body = {
        "task": "t.add",
        "id": task_id,
        "args": [2, 3],
        "kwargs": {},
        "retries": 0,
        "eta": None,
        "expires": None,
        "utc": True,
        "callbacks": None,
        "errbacks": None,
        "timelimit": [None, None],
        "taskset": None,
        "chord": None,
    }
    message = RawMessage(json.dumps(body).encode(), properties={"correlation_id": task_id})
    with start_worker(app):
        app.transport.publish("celery", message)
        assert app.AsyncResult(task_id).get(timeout=5) == 5


def test_minimal_celery_message_runs(app: Celeriac, add: Any) -> None:
    """Only ``id`` and ``task`` headers and a 3-item body: every other key has a default."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[4, 5], {}, {"callbacks": None, "errbacks": None, "chain": None}])
    message = RawMessage(body.encode(), headers={"id": task_id, "task": "t.add"})
    with start_worker(app):
        app.transport.publish("celery", message)
        assert app.AsyncResult(task_id).get(timeout=5) == 9
