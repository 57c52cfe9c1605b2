"""Execution turns outcomes into I/O on a sink: results, retries, follow-ups, errbacks, acks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac._internal.timeutils import utcnow
from celeriac.app.context import Context
from celeriac.app.trace import Failed, Ignored, Outcome, Rejected, Retrying, Succeeded
from celeriac.exceptions import Retry
from celeriac.protocol.envelope import RawMessage
from celeriac.protocol.message import decode
from celeriac.protocol.result_meta import ResultMeta
from celeriac.transports.base import Delivery
from celeriac.worker.execution import Execution
from celeriac.worker.request import Invalid, Request, RequestReader
from celeriac.worker.state import WorkerState


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def publish(self, queue: str, message: RawMessage, eta: float | None) -> None:
        self.calls.append(("publish", (queue, decode(message), eta)))

    def store(self, meta: ResultMeta) -> None:
        self.calls.append(("store", meta))

    def ack(self, delivery: Delivery) -> None:
        self.calls.append(("ack", delivery.tag))

    def requeue(self, delivery: Delivery) -> None:
        self.calls.append(("requeue", delivery.tag))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.calls.append(("dead_letter", reason))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def of(self, kind: str) -> list[Any]:
        return [value for k, value in self.calls if k == kind]


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("exe", broker="memory://exe", backend="memory://exe")

    @application.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="t.quiet", ignore_result=True)
    def quiet() -> None:
        pass

    yield application
    application.close()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def make(app: Celeriac, sink: RecordingSink, **kwargs: Any) -> Execution:
    return Execution(app, sink, WorkerState(), hostname="w1@host", **kwargs)


def request_for(app: Celeriac, name: str, *args: Any, **options: Any) -> Request:
    publication = app.prepare(name, args, {}, **options)
    delivery = Delivery("tag-1", publication.queue, app.encode(publication.message))
    request = RequestReader(app.tasks, hostname="w1@host").read(delivery)
    assert isinstance(request, Request)
    return request


def handle(execution: Execution, request: Request, outcome: Outcome) -> None:
    asyncio.run(execution.outcome(request, outcome))


def test_success_publishes_follow_ups_before_storing_then_acks(
    app: Celeriac, sink: RecordingSink
) -> None:
    link = dict(app.tasks["t.add"].s(10))
    later = dict(app.tasks["t.add"].s(100))
    step = dict(app.tasks["t.add"].s(1000))
    request = request_for(app, "t.add", 1, 2, link=link, chain=[later, step])
    handle(make(app, sink), request, Succeeded(3, 0.01))

    assert sink.kinds() == ["publish", "publish", "store", "ack"]
    (q1, callback, eta1), (q2, nxt, eta2) = sink.of("publish")
    assert (q1, q2, eta1, eta2) == ("celery", "celery", None, None)
    assert callback.task == "t.add" and callback.args == (3, 10)
    assert callback.parent_id == request.id and callback.root_id == request.id
    assert nxt.args == (3, 1000)  # chain[-1] is the next step
    assert [s["args"] for s in nxt.chain] == [[100]]  # the rest, still reversed
    (meta,) = sink.of("store")
    assert meta.status == states.SUCCESS and meta.result == 3
    assert [c[0][0] for c in meta.children] == [callback.id, nxt.id]


def test_last_chain_step_gets_an_empty_chain(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2, chain=[dict(app.tasks["t.add"].si(5, 5))])
    handle(make(app, sink), request, Succeeded(3, 0.01))
    ((_, step, _),) = sink.of("publish")
    assert step.chain == []
    assert step.args == (5, 5)  # immutable: the result is not prepended


def test_unsendable_follow_up_fails_the_task(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2, link=dict(app.tasks["t.add"].s(1)))
    handle(make(app, sink), request, Succeeded(object(), 0.01))
    (meta,) = sink.of("store")
    assert meta.status == states.FAILURE
    assert sink.of("publish") == []
    assert sink.kinds()[-1] == "ack"


def test_failure_stores_exception_dict_and_traceback(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2)
    execution = make(app, sink)
    handle(execution, request, Failed(ValueError("boom", 42), "Traceback...", 0.01))
    meta = sink.of("store")[0]
    assert meta.status == states.FAILURE
    assert meta.result == {
        "exc_type": "ValueError",
        "exc_message": ["boom", 42],
        "exc_module": "builtins",
    }
    assert meta.traceback == "Traceback..."
    assert meta.date_done is not None
    assert sink.kinds() == ["store", "ack"]
    assert execution.state.failed == 1 and execution.state.processed == 1


def test_errbacks_old_style_are_sent_with_the_task_id(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2, link_error=dict(app.tasks["t.add"].s(7)))
    handle(make(app, sink), request, Failed(ValueError("x"), "", 0.0))
    ((_, errback, _),) = sink.of("publish")
    assert errback.args == (request.id, 7)
    assert errback.parent_id == request.id


def test_errbacks_taking_request_exc_traceback_run_here(app: Celeriac, sink: RecordingSink) -> None:
    seen: list[Any] = []

    @app.task(name="t.on_error")
    def on_error(request: Context, exc: BaseException, traceback: str) -> None:
        seen.append((request.id, exc, traceback))

    request = request_for(app, "t.add", 1, 2, link_error=dict(on_error.s()))
    error = ValueError("x")
    handle(make(app, sink), request, Failed(error, "TB", 0.0))
    assert seen == [(request.id, error, "TB")]
    assert sink.of("publish") == []


def test_retry_publishes_a_new_message_with_the_same_id(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2, link=dict(app.tasks["t.add"].s(1)))
    eta = utcnow() + timedelta(seconds=30)
    retry = Retry(exc=KeyError("k"), when=30)
    handle(make(app, sink), request, Retrying(KeyError("k"), eta, retry, "TB", 0.0))
    assert sink.kinds() == ["publish", "store", "ack"]
    ((queue, message, due),) = sink.of("publish")
    assert queue == "celery"
    assert message.id == request.id
    assert message.retries == 1
    assert message.args == (1, 2)
    assert message.parent_id == request.id
    assert message.root_id == request.message.root_id
    assert message.callbacks == request.message.callbacks
    assert due == pytest.approx(eta.timestamp())
    (meta,) = sink.of("store")
    assert meta.status == states.RETRY
    assert meta.result["exc_type"] == "KeyError"
    assert meta.children == [((request.id, None), None)]
    assert meta.date_done is None


def test_retry_with_new_arguments(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2)
    retry = Retry(when=0, args=(5, 6), queue="other")
    handle(make(app, sink), request, Retrying(None, utcnow(), retry, "", 0.0))
    ((queue, message, due),) = sink.of("publish")
    assert (queue, message.args, due) == ("other", (5, 6), None)


def test_reject_and_ignore(app: Celeriac, sink: RecordingSink) -> None:
    execution = make(app, sink)
    handle(execution, request_for(app, "t.add", 1, 2), Rejected(True, "later", 0.0))
    handle(execution, request_for(app, "t.add", 1, 2), Rejected(False, "bad input", 0.0))
    handle(execution, request_for(app, "t.add", 1, 2), Ignored(0.0))
    assert sink.calls == [
        ("requeue", "tag-1"),
        ("dead_letter", "rejected by the task: bad input"),
        ("ack", "tag-1"),
    ]
    assert execution.state.counters.rejected == 2
    assert execution.state.counters.ignored == 1


def test_ignore_result_stores_nothing_but_errors_can_be_kept(
    app: Celeriac, sink: RecordingSink
) -> None:
    execution = make(app, sink)
    handle(execution, request_for(app, "t.quiet"), Succeeded(None, 0.0))
    handle(
        execution, request_for(app, "t.add", 1, 2, ignore_result=True), Failed(KeyError(), "", 0)
    )
    assert sink.kinds() == ["ack", "ack"]
    app.conf.task_store_errors_even_if_ignored = True
    handle(execution, request_for(app, "t.quiet"), Failed(KeyError(), "", 0))
    assert sink.kinds()[-2:] == ["store", "ack"]


def test_no_backend_stores_nothing(app: Celeriac, sink: RecordingSink) -> None:
    handle(make(app, sink, store_results=False), request_for(app, "t.add", 1, 2), Succeeded(3, 0))
    assert sink.kinds() == ["ack"]


def test_early_acked_request_is_not_acked_twice(app: Celeriac, sink: RecordingSink) -> None:
    request = request_for(app, "t.add", 1, 2)
    request.acked = True
    handle(make(app, sink), request, Succeeded(3, 0))
    assert sink.kinds() == ["store"]


def test_expired_is_revoked_and_acked(app: Celeriac, sink: RecordingSink) -> None:
    execution = make(app, sink)
    execution.expired(request_for(app, "t.add", 1, 2, expires=-1))
    meta = sink.of("store")[0]
    assert meta.status == states.REVOKED
    assert meta.result == {
        "exc_type": "TaskRevokedError",
        "exc_message": ["expired"],
        "exc_module": "celery.exceptions",  # as Celery writes it (spec 5.2)
    }
    assert meta.children is None
    assert sink.kinds() == ["store", "ack"]


def test_started_record(app: Celeriac, sink: RecordingSink) -> None:
    app.conf.task_track_started = True
    make(app, sink).started(request_for(app, "t.add", 1, 2))
    (meta,) = sink.of("store")
    assert meta.status == states.STARTED
    assert set(meta.result) == {"pid", "hostname"} and meta.result["hostname"] == "w1@host"


def test_result_extended(app: Celeriac, sink: RecordingSink) -> None:
    handle(make(app, sink, result_extended=True), request_for(app, "t.add", 1, 2), Succeeded(3, 0))
    (meta,) = sink.of("store")
    assert meta.extended == {
        "name": "t.add",
        "args": [1, 2],
        "kwargs": {},
        "worker": "w1@host",
        "retries": 0,
        "queue": "celery",
    }


def test_invalid_message_is_dead_lettered_with_failure(app: Celeriac, sink: RecordingSink) -> None:
    publication = app.prepare("t.missing", (1,), {})
    delivery = Delivery("tag-9", "celery", app.encode(publication.message))
    invalid = RequestReader(app.tasks, hostname="w").read(delivery)
    assert isinstance(invalid, Invalid)
    execution = make(app, sink)
    asyncio.run(execution.invalid(invalid))
    meta = sink.of("store")[0]
    assert meta.status == states.FAILURE and meta.result["exc_type"] == "NotRegistered"
    assert sink.of("dead_letter") == ["unknown task 't.missing': not registered in this worker"]
    assert execution.state.dead_lettered == 1


def test_a_plain_success_is_handled_at_once_the_same_as_by_outcome(
    app: Celeriac, sink: RecordingSink
) -> None:
    """``outcome_now`` (no coroutine) queues what ``outcome`` queues for a plain success."""
    execution = make(app, sink)
    assert execution.outcome_now(request_for(app, "t.add", 1, 2), Succeeded(3, 0.01))
    now = list(sink.calls)
    sink.calls.clear()
    handle(execution, request_for(app, "t.add", 1, 2), Succeeded(3, 0.01))
    assert [kind for kind, _ in now] == sink.kinds() == ["store", "ack"]
    (meta,) = [v for k, v in now if k == "store"]
    assert (meta.status, meta.result, meta.children) == (states.SUCCESS, 3, [])
    assert execution.state.counters.processed == execution.state.counters.succeeded == 2


def test_outcomes_with_more_to_do_are_left_to_the_coroutine(
    app: Celeriac, sink: RecordingSink
) -> None:
    execution = make(app, sink)
    link = dict(app.tasks["t.add"].s(10))
    with_link = request_for(app, "t.add", 1, 2, link=link)
    with_chain = request_for(app, "t.add", 1, 2, chain=[dict(app.tasks["t.add"].s(1))])
    plain = request_for(app, "t.add", 1, 2)
    failed = Failed(ValueError("x"), "", 0.0)
    assert not execution.outcome_now(with_link, Succeeded(3, 0.0))
    assert not execution.outcome_now(with_chain, Succeeded(3, 0.0))
    assert not execution.outcome_now(plain, failed)
    assert not execution.outcome_now(plain, Ignored(0.0))
    assert sink.calls == []
    assert execution.state.counters.processed == 0
