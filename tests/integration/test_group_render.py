"""A group's members rendered by the Redis publisher's template (``canvas.sending``).

The rendered envelopes are the full path's bytes; members land in order with their ids and
``group_index``; with publish signals connected the full path runs and the receivers see
every member; mixed plans keep their order.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from celeriac import Celeriac, signals
from celeriac.canvas import group
from celeriac.canvas.base import Plan
from celeriac.canvas.sending import Rendered, prepare_calls
from celeriac.protocol.envelope import RawMessage, dumps_envelope, loads_envelope

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def app(redis_app: Celeriac) -> Celeriac:
    return redis_app


def plan_of(app: Celeriac, sig: Any) -> Plan:
    plan = Plan(app)
    sig.clone()._plan(plan, (), {}, {})
    return plan


def test_rendered_members_are_the_full_paths_bytes(app: Celeriac) -> None:
    @app.task(name="grp.any")
    def anything(*args: Any, **kwargs: Any) -> None:
        return None

    values: list[Any] = [1, "x'y", None, [1, {"a": 2.5}], {"k": "\u00e9"}, 10**20, "z" * 1500]
    sig = group([anything.s(v, i) for i, v in enumerate(values)] + [anything.s(k=1)])
    plan = plan_of(app, sig)
    rendered = prepare_calls(app, plan.calls, render=True)
    full = prepare_calls(app, plan.calls, render=False)
    assert any(isinstance(item[2], Rendered) for item in rendered)
    for (_, queue, mine, _), (_, _, raw, _) in zip(rendered, full, strict=True):
        assert isinstance(raw, RawMessage)
        if isinstance(mine, Rendered):
            tag = json.loads(mine.payload)["properties"]["delivery_tag"]
            assert mine.payload == dumps_envelope(raw, routing_key=queue, delivery_tag=tag)


def test_a_group_lands_in_order_with_its_ids(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="grp.add")
    def add(x: int, y: int) -> int:
        return x + y

    result = group(add.s(i, i) for i in range(2500)).apply_async()
    sent = [loads_envelope(raw).message.headers for raw in client.lrange(f"{prefix}celery", 0, -1)]
    sent.reverse()  # LPUSH: the first sent is at the right end
    assert [h["id"] for h in sent] == [r.id for r in result.results]
    assert [h["group_index"] for h in sent] == list(range(2500))
    assert {h["group"] for h in sent} == {result.id}
    assert [h["argsrepr"] for h in sent[:2]] == ["(0, 0)", "(1, 1)"]


def test_with_publish_signals_every_member_is_announced(
    app: Celeriac, client: Any, prefix: str
) -> None:
    @app.task(name="grp.noop")
    def noop(i: int) -> None:
        return None

    seen: list[str] = []

    def before(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])

    signals.before_task_publish.connect(before)
    try:
        result = group(noop.s(i) for i in range(5)).apply_async()
    finally:
        signals.before_task_publish.disconnect(before)
    assert seen == [r.id for r in result.results]
    assert client.llen(f"{prefix}celery") == 5


def test_a_mixed_group_keeps_its_order(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="grp.a")
    def a(i: int) -> None:
        return None

    @app.task(name="grp.b")
    def b(i: int) -> None:
        return None

    members = [a.s(0), a.s(1), b.s(2), a.s(3).set(queue="other"), a.s(4), a.s(5), b.s(6)]
    result = group(members).apply_async()
    ids = [r.id for r in result.results]
    main = [
        loads_envelope(r).message.headers["id"] for r in client.lrange(f"{prefix}celery", 0, -1)
    ]
    other = [
        loads_envelope(r).message.headers["id"] for r in client.lrange(f"{prefix}other", 0, -1)
    ]
    assert list(reversed(main)) == [i for n, i in enumerate(ids) if n != 3]
    assert other == [ids[3]]


def test_a_shared_root_id_is_kept_by_every_member(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="grp.rooted")
    def rooted(i: int) -> None:
        return None

    root = "0f0f0f0f-0000-4000-8000-000000000000"
    members = [rooted.s(1).set(task_id=root), rooted.s(2), rooted.s(3)]
    group(members).apply_async(root_id=root)
    sent = [loads_envelope(r).message.headers for r in client.lrange(f"{prefix}celery", 0, -1)]
    assert [h["root_id"] for h in sent] == [root, root, root]


def test_a_single_link_signature_is_accepted(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="grp.first")
    def first(i: int) -> None:
        return None

    @app.task(name="grp.after")
    def after(value: Any) -> None:
        return None

    result = group(first.s(1), first.s(2)).apply_async(link=after.s(), link_error=after.s())
    sent = {
        h.message.headers["id"]: h.message
        for h in map(loads_envelope, client.lrange(f"{prefix}celery", 0, -1))
    }
    head = sent[result.results[0].id]
    assert json.loads(head.body)[2]["callbacks"][0]["task"] == "grp.after"
    assert all(json.loads(m.body)[2]["errbacks"][0]["task"] == "grp.after" for m in sent.values())


def test_applying_a_group_leaves_it_as_it_was(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="grp.again")
    def again(i: int) -> None:
        return None

    members = [again.s(i) for i in range(3)]
    sig = group(members)
    before = json.dumps(sig, sort_keys=True)
    first = sig.apply_async()
    second = sig.apply_async()
    assert json.dumps(sig, sort_keys=True) == before  # no ids written into the caller's group
    assert all("task_id" not in m.options for m in members)
    ids = [r.id for r in first.results] + [r.id for r in second.results]
    assert len(set(ids)) == 6 and first.id != second.id
    frozen = group(again.s(i) for i in range(2))
    expected = frozen.freeze()
    sent = frozen.apply_async()
    assert [r.id for r in sent.results] == [r.id for r in expected.results]
    assert sent.id == expected.id
