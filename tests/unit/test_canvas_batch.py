"""Sending a big group or chord prepares one member and reuses it for the others
(``celeriac.canvas.sending.prepare_calls``): every message must be byte for byte the one
``app.prepare`` + ``app.encode`` give for that call, and each member keeps its own id,
arguments, ``group_index`` and ``argsrepr``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, chord, group
from celeriac.canvas.base import Plan
from celeriac.canvas.sending import prepare_calls


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("batch", broker="memory://canvas-batch", backend="memory://canvas-batch")

    @application.task(name="batch.add")
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @application.task(name="batch.tsum")
    def tsum(values: list[Any]) -> Any:
        return sum(values)

    yield application
    application.close()


def _planned(app: Celeriac, sig: Any) -> Plan:
    plan = Plan(app)
    sig.clone()._plan(plan, (), {}, {})
    return plan


def _slow(app: Celeriac, plan: Plan) -> list[tuple[str, str, Any, float | None]]:
    """What ``send_plan`` sent before: one ``prepare`` and ``encode`` per call."""
    out = []
    for call in plan.calls:
        options = {k: v for k, v in call.options.items() if k not in ("retry", "retry_policy")}
        publication = app.prepare(call.name, call.args, call.kwargs, **options)
        out.append((call.name, publication.queue, app.encode(publication.message), publication.eta))
    return out


def _same(app: Celeriac, sig: Any) -> int:
    plan = _planned(app, sig)
    fast, slow = prepare_calls(app, plan.calls), _slow(app, plan)
    assert len(fast) == len(slow) == len(plan.calls)
    for (name, queue, raw, eta), (name2, queue2, raw2, eta2) in zip(fast, slow, strict=True):
        assert (name, queue) == (name2, queue2)
        assert raw.body == raw2.body
        headers, headers2 = dict(raw.headers), dict(raw2.headers)
        if eta is not None or eta2 is not None:  # a countdown: prepared at two moments
            assert eta is not None and eta2 is not None and abs(eta - eta2) < 5
            headers.pop("eta"), headers2.pop("eta")
        assert json.dumps(headers) == json.dumps(headers2)  # values and key order
        assert json.dumps(raw.properties) == json.dumps(raw2.properties)
        assert (raw.content_type, raw.content_encoding) == (
            raw2.content_type,
            raw2.content_encoding,
        )
    return len({raw.headers["id"] for _, _, raw, _ in fast})


def test_chord_members_are_what_prepare_and_encode_give(app: Celeriac) -> None:
    add, tsum = app.tasks["batch.add"], app.tasks["batch.tsum"]
    header = [add.s(i, i) for i in range(50)] + [add.s(f"s{i}", "x") for i in range(5)]
    header += [add.s(1.5, None), add.s(True, y=2), add.s([1, {"a": (2, 3)}], [4])]
    assert _same(app, chord(header, tsum.s())) == len(header)


def test_group_with_options_and_links(app: Celeriac) -> None:
    add, tsum = app.tasks["batch.add"], app.tasks["batch.tsum"]
    sig = group([add.s(i, 1) for i in range(20)], app=app)
    sig.link_error(tsum.s())
    assert _same(app, sig.set(priority=3, queue="other", headers={"h": 1})) == 20


def test_mixed_tasks_and_a_parent_root(app: Celeriac) -> None:
    add, tsum = app.tasks["batch.add"], app.tasks["batch.tsum"]
    members = [add.s(1, 2), tsum.s([1]), add.s(3, 4), add.s(5, 6).set(countdown=30), add.s(7, 8)]
    sig = group(members, app=app)
    sig.freeze(root_id="11111111-1111-1111-1111-111111111111")
    assert _same(app, sig) == 5


def test_members_without_options_plan_as_the_general_merge_does(app: Celeriac) -> None:
    """``group._plan_plain`` plans all members in one pass; its calls must be what freezing
    each member and ``Signature._call`` give, for every member shape."""
    from celeriac.canvas.base import Membership, freeze_options

    add = app.tasks["batch.add"]
    members = [
        add.s(1, 2),
        add.s(1),
        add.s(y=3),
        add.si(4, 5),
        add.si(4, y=5),
        add.s(),
    ]
    at = Membership(None, {"task": "batch.tsum"}, "root-1", "parent-1", None)
    for group_args, group_kwargs in [((), {}), ((7,), {}), ((), {"y": 8})]:
        grp = group(members, app=app)
        plan = Plan(app)
        grp._plan_plain(plan, "gid-1", at, group_args, group_kwargs, {})
        for index, (member, call) in enumerate(zip(grp.tasks, plan.calls, strict=True)):
            own: dict[str, Any] = {"task_id": call.options["task_id"]}
            freeze_options(own, None, "gid-1", at, index)
            general = member._call((*group_args,), group_kwargs, {}, own)
            assert (call.name, call.args, call.kwargs) == (
                general.name,
                general.args,
                general.kwargs,
            ), member
            assert call.options == general.options
            assert list(call.options) == list(general.options)  # the same order too
