"""``prepare``: apply_async options into a TaskMessage and a queue, as Celery resolves them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.app.task import Task
from celeriac.exceptions import QueueNotFound


def _task(app: Celeriac, **options: Any) -> Task[Any, Any]:
    @app.task(name="t.add", **options)
    def add(x: int, y: int) -> int:
        return x + y

    return add


def test_defaults(app: Celeriac) -> None:
    _task(app)
    pub = app.prepare("t.add", (2, 3))
    msg = pub.message
    assert pub.queue == "celery" and pub.eta is None
    assert msg.task == "t.add" and msg.args == (2, 3) and msg.kwargs == {}
    assert msg.root_id == msg.id and msg.parent_id is None
    assert msg.priority == 0 and msg.retries == 0 and msg.ignore_result is False
    assert msg.origin and msg.origin.startswith("gen") and msg.reply_to
    assert msg.serializer == "json"


def test_countdown_eta_expires(app: Celeriac) -> None:
    _task(app)
    before = datetime.now(timezone.utc)
    pub = app.prepare("t.add", (1, 1), countdown=10, expires=60)
    msg = pub.message
    assert msg.eta is not None and msg.expires is not None
    assert timedelta(seconds=9) < msg.eta - before < timedelta(seconds=11)
    assert timedelta(seconds=59) < msg.expires - before < timedelta(seconds=61)
    assert pub.eta == pytest.approx(msg.eta.timestamp())
    eta = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert app.prepare("t.add", (1, 1), eta=eta).message.eta == eta
    past = app.prepare("t.add", (1, 1), eta=datetime(2000, 1, 1, tzinfo=timezone.utc))
    assert past.eta is None  # due now


def test_queue_resolution_order(app: Celeriac) -> None:
    _task(app, queue="task-queue")
    assert app.prepare("t.add", (1, 1)).queue == "task-queue"
    app.conf.task_routes = {"t.*": {"queue": "routed"}}
    assert app.prepare("t.add", (1, 1)).queue == "routed"
    assert app.prepare("t.add", (1, 1), queue="explicit").queue == "explicit"
    assert app.prepare("t.add", (1, 1), routing_key="rk").queue == "rk"
    app.conf.task_routes = [lambda name, args, kwargs, options, task=None: "by-func"]
    assert app.prepare("t.add", (1, 1)).queue == "by-func"
    app.conf.task_routes = {"t.add": "plain-string"}
    assert app.prepare("t.add", (1, 1)).queue == "plain-string"


def test_missing_queue_when_not_allowed(app: Celeriac) -> None:
    app.conf.update(task_queues=["a", "b"], task_create_missing_queues=False)
    _task(app)
    with pytest.raises(QueueNotFound, match="'zzz'"):
        app.prepare("t.add", (1, 1), queue="zzz")
    assert app.prepare("t.add", (1, 1), queue="a").queue == "a"


def test_priority_links_headers_limits(app: Celeriac) -> None:
    add = _task(app, priority=3)
    msg = app.prepare(
        "t.add",
        (1, 1),
        link=add.s(10),
        link_error=[add.si(0, 0)],
        headers={"x-custom": "v"},
        time_limit=30,
        soft_time_limit=20,
        shadow="alias",
        ignore_result=True,
    ).message
    assert msg.priority == 3
    assert app.prepare("t.add", (1, 1), priority=9).message.priority == 9
    assert msg.callbacks == [
        {
            "task": "t.add",
            "args": [10],
            "kwargs": {},
            "options": {},
            "subtask_type": None,
            "immutable": False,
        }
    ]
    assert msg.errbacks is not None and msg.errbacks[0]["immutable"] is True
    assert msg.extra_headers == {"x-custom": "v"}
    assert msg.timelimit == (30, 20)
    assert msg.shadow == "alias" and msg.ignore_result is True


def test_unknown_option_and_bad_args(app: Celeriac) -> None:
    _task(app)
    with pytest.raises(TypeError, match=r"'countdwon'.*'countdown'"):
        app.prepare("t.add", (1, 1), countdwon=5)
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        app.prepare("t.add", 5)  # type: ignore[arg-type]


def test_parent_and_root_ids_inside_a_task(app: Celeriac) -> None:
    from celeriac.app import context as ctx

    add = _task(app)
    request = ctx.Context(id="parent-id", root_id="root-id", called_directly=False)
    token = ctx.push(add, request)
    try:
        msg = app.prepare("t.add", (1, 1)).message
    finally:
        ctx.pop(token)
    assert msg.parent_id == "parent-id" and msg.root_id == "root-id"


def test_from_signature_prepends_result(app: Celeriac) -> None:
    add = _task(app)
    parent = app.prepare("t.add", (1, 1)).message
    step = app.publication_from_signature(
        dict(add.s(10)), args_prefix=(2,), parent=parent, chain=[]
    )
    assert step.message.args == (2, 10)
    assert step.message.parent_id == parent.id and step.message.root_id == parent.root_id
    assert step.message.chain == []
    frozen = app.publication_from_signature(dict(add.si(5, 5)), args_prefix=(2,))
    assert frozen.message.args == (5, 5)
