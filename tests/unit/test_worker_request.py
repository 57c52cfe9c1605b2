"""RequestReader: a Delivery becomes a runnable Request, or an Invalid naming what is wrong."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac._internal.timeutils import utcnow
from celeriac.exceptions import NotRegistered, WorkerLostError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery
from celeriac.worker.request import Invalid, Request, RequestReader


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("req", broker="memory://req", backend="memory://req")

    @application.task(name="test_worker_request.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="test_worker_request.limited", soft_time_limit=7, time_limit=9)
    def limited() -> None:
        pass

    yield application
    application.close()


def delivery_of(app: Celeriac, name: str, *args: Any, count: int = 1, **options: Any) -> Delivery:
    publication = app.prepare(name, args, {}, **options)
    raw = app.encode(publication.message)
    return Delivery("tag-1", publication.queue, raw, delivery_count=count)


def reader(app: Celeriac, **kwargs: Any) -> RequestReader:
    return RequestReader(app.tasks, hostname="w1@host", accept=app.accept_content, **kwargs)


def test_valid_message_becomes_a_request(app: Celeriac) -> None:
    delivery = delivery_of(app, "test_worker_request.add", 2, 3)
    request = reader(app).read(delivery)
    assert isinstance(request, Request)
    assert request.name == "test_worker_request.add"
    assert request.args == (2, 3)
    assert request.context.hostname == "w1@host"
    assert request.context.called_directly is False
    assert request.context.delivery_info["routing_key"] == "celery"
    assert request.context.root_id == request.id
    assert request.acks_late is True  # Celeriac's default
    assert request.time_limits() == (None, None)


def test_time_limits_come_from_the_message_then_the_task(app: Celeriac) -> None:
    plain = reader(app).read(delivery_of(app, "test_worker_request.limited"))
    assert isinstance(plain, Request)
    assert plain.time_limits() == (7.0, 9.0)
    override = delivery_of(app, "test_worker_request.limited", soft_time_limit=1, time_limit=2)
    request = reader(app).read(override)
    assert isinstance(request, Request)
    assert request.time_limits() == (1.0, 2.0)


def test_expires_and_eta(app: Celeriac) -> None:
    past = reader(app).read(delivery_of(app, "test_worker_request.add", 1, 2, expires=-5))
    assert isinstance(past, Request) and past.expired(utcnow())
    later = reader(app).read(delivery_of(app, "test_worker_request.add", 1, 2, countdown=30))
    assert isinstance(later, Request) and not later.expired(utcnow())
    eta = later.eta_timestamp()
    assert eta is not None and eta > (utcnow() + timedelta(seconds=25)).timestamp()


def test_unknown_task(app: Celeriac) -> None:
    result = reader(app).read(delivery_of(app, "no.such.task", 1))
    assert isinstance(result, Invalid)
    assert "unknown task 'no.such.task'" in result.reason
    assert isinstance(result.exc, NotRegistered)
    assert result.task_id is not None and result.task_name == "no.such.task"


def test_wrong_arguments(app: Celeriac) -> None:
    result = reader(app).read(delivery_of(app, "test_worker_request.add", 1, 2, 3))
    assert isinstance(result, Invalid)
    assert result.reason.startswith("wrong arguments: test_worker_request.add(")
    assert isinstance(result.exc, TypeError)


def test_message_too_large(app: Celeriac) -> None:
    delivery = delivery_of(app, "test_worker_request.add", "x" * 500, 1)
    result = reader(app, max_message_size=100).read(delivery)
    assert isinstance(result, Invalid)
    assert "exceeds worker_max_message_size (100 bytes)" in result.reason
    assert result.task_name == "test_worker_request.add"  # read from the headers
    assert result.exc is None  # not decoded: nothing stored


def test_undecodable_body(app: Celeriac) -> None:
    raw = RawMessage(b"{not json", headers={"id": "abc", "task": "test_worker_request.add"})
    result = reader(app).read(Delivery("t", "celery", raw))
    assert isinstance(result, Invalid)
    assert result.reason.startswith("undecodable message")
    assert result.label == "test_worker_request.add[abc]"


def test_pickle_is_refused_unless_accepted(app: Celeriac) -> None:
    body = pickle.dumps(((1, 2), {}, {}))
    raw = RawMessage(
        body,
        content_type="application/x-python-serialize",
        content_encoding="binary",
        headers={"id": "p1", "task": "test_worker_request.add", "lang": "py"},
    )
    result = reader(app).read(Delivery("t", "celery", raw))
    assert isinstance(result, Invalid)
    assert "content type 'application/x-python-serialize' is not accepted" in result.reason


def test_poison_guard(app: Celeriac) -> None:
    delivery = delivery_of(app, "test_worker_request.add", 1, 2, count=6)
    result = reader(app, max_deliveries=5).read(delivery)
    assert isinstance(result, Invalid)
    assert "delivered 6 times" in result.reason
    assert isinstance(result.exc, WorkerLostError)
    ok = reader(app, max_deliveries=5).read(
        delivery_of(app, "test_worker_request.add", 1, 2, count=5)
    )
    assert isinstance(ok, Request)


def test_a_broken_decoder_does_not_escape(app: Celeriac) -> None:
    def broken(raw: RawMessage, accept: Any) -> Any:
        raise RuntimeError("decoder bug")

    delivery = delivery_of(app, "test_worker_request.add", 1, 2)
    result = RequestReader(app.tasks, hostname="w", decoder=broken).read(delivery)
    assert isinstance(result, Invalid)
    assert "RuntimeError: decoder bug" in result.reason


def test_reasons_are_one_line(app: Celeriac) -> None:
    delivery = delivery_of(app, "test_worker_request.add", 1, 2)
    invalid = Invalid(delivery, "first line\n  second line\r\n")
    assert invalid.reason == "first line second line"
