"""The canvas without a worker: Celery's dict forms, composition, freezing, plans, eager runs."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, chain, chord, chunks, group, maybe_signature, signature, xmap
from celeriac.canvas import Plan, Signature, is_composite, leaves, xstarmap
from celeriac.exceptions import ChordError, ImproperlyConfigured, NotRegistered
from celeriac.result import AsyncResult, GroupResult, result_from_tuple


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("canvas", broker="memory://canvas-unit", backend="memory://canvas-unit")

    @application.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="t.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @application.task(name="t.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @application.task(name="t.boom")
    def boom(*args: Any) -> None:
        raise ValueError("boom")

    yield application
    application.close()


def s(app: Celeriac, name: str, *args: Any, **kwargs: Any) -> Signature[Any]:
    return app.tasks[name].s(*args, **kwargs)


def roundtrip(sig: Signature[Any]) -> dict[str, Any]:
    """The signature as it travels: JSON text, read back as plain dicts."""
    data: dict[str, Any] = json.loads(json.dumps(sig))
    return data


# -- dict forms --------------------------------------------------------------------------------
def test_leaf_dict_form_is_celerys(app: Celeriac) -> None:
    sig = s(app, "t.add", 2, 2).set(countdown=10)
    assert list(sig) == ["task", "args", "kwargs", "options", "subtask_type", "immutable"]
    assert roundtrip(sig) == {
        "task": "t.add",
        "args": [2, 2],
        "kwargs": {},
        "options": {"countdown": 10},
        "subtask_type": None,
        "immutable": False,
    }


def test_composite_dict_forms_are_celerys(app: Celeriac) -> None:
    add, xsum = s(app, "t.add", 1, 1), s(app, "t.xsum")
    assert roundtrip(chain(add, s(app, "t.mul", 2)))["task"] == "celery.chain"
    c = roundtrip(chain(add, s(app, "t.mul", 2)))
    assert c["subtask_type"] == "chain" and [t["task"] for t in c["kwargs"]["tasks"]] == [
        "t.add",
        "t.mul",
    ]
    g = roundtrip(group(add, add))
    assert (g["task"], g["subtask_type"], len(g["kwargs"]["tasks"])) == ("celery.group", "group", 2)
    ch = roundtrip(chord([add, add], xsum))
    assert (ch["task"], ch["subtask_type"]) == ("celery.chord", "chord")
    assert set(ch["kwargs"]) == {"header", "body", "kwargs"}
    assert ch["kwargs"]["header"]["subtask_type"] == "group"
    assert ch["kwargs"]["body"]["task"] == "t.xsum"
    m = roundtrip(app.tasks["t.xsum"].map([[1], [2]]))
    assert (m["task"], m["subtask_type"], m["immutable"]) == ("celery.map", "xmap", True)
    k = roundtrip(app.tasks["t.add"].chunks([(1, 1)] * 4, 2))
    assert (k["task"], k["subtask_type"], k["kwargs"]["n"]) == ("celery.chunks", "chunks", 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: chain(s(a, "t.add", 1, 1), s(a, "t.mul", 3)),
        lambda a: group(s(a, "t.add", i, i) for i in range(3)),
        lambda a: chord([s(a, "t.add", 1, 1), s(a, "t.add", 2, 2)], s(a, "t.xsum")),
        lambda a: chain(s(a, "t.add", 1, 1), chord([s(a, "t.add", 2)], s(a, "t.xsum"))),
        lambda a: a.tasks["t.add"].starmap([(1, 2), (3, 4)]),
        lambda a: a.tasks["t.add"].chunks([(1, 2)] * 5, 2),
    ],
    ids=["chain", "group", "chord", "chain-chord", "starmap", "chunks"],
)
def test_dict_round_trip(app: Celeriac, make: Any) -> None:
    sig = make(app)
    back = maybe_signature(roundtrip(sig), app=app)
    assert type(back) is type(sig)
    assert roundtrip(back) == roundtrip(sig)
    assert signature(roundtrip(sig), app=app) == sig
    assert type(pickle.loads(pickle.dumps(sig))) is type(sig)
    assert type(copy.deepcopy(sig)) is type(sig) and copy.deepcopy(sig) == sig


def test_a_celery_clients_chord_dict_is_read() -> None:
    body = {"task": "w.tsum", "args": [], "kwargs": {}, "options": {"task_id": "b"}}
    header = {
        "task": "celery.group",
        "args": [],
        "kwargs": {"tasks": [{"task": "w.add", "args": [1, 1], "kwargs": {}, "options": {}}]},
        "options": {},
        "subtask_type": "group",
        "immutable": False,
    }
    data = {
        "task": "celery.chord",
        "args": [],
        "kwargs": {"kwargs": {}, "header": header, "body": body},
        "options": {},
        "subtask_type": "chord",
        "immutable": False,
    }
    sig = maybe_signature(data)
    assert isinstance(sig, chord) and isinstance(sig.header, group)
    assert sig.body is not None and sig.body.id == "b" and sig.tasks[0].args == (1, 1)
    assert maybe_signature(None) is None
    assert [x.task for x in maybe_signature([body, body])] == ["w.tsum", "w.tsum"]


# -- partials, options, clone ------------------------------------------------------------------
def test_partials_clone_and_replace(app: Celeriac) -> None:
    sig = app.tasks["t.add"].signature((2, 2), {"debug": True}, countdown=10)
    assert (sig.args, sig.kwargs, sig.options) == ((2, 2), {"debug": True}, {"countdown": 10})
    partial = s(app, "t.add", 2)
    assert repr(partial.clone(args=(4,), kwargs={"debug": True})) == "t.add(4, 2, debug=True)"
    assert repr(s(app, "t.add", 2, 2)) == "t.add(2, 2)"
    immutable = app.tasks["t.add"].si(2, 2)
    assert immutable.clone((9,)).args == (2, 2) and repr(immutable) == "t.add(2, 2)!"
    replaced = sig.replace(args=(5, 5), options={})
    assert (replaced.args, replaced.options, sig.args) == ((5, 5), {}, (2, 2))
    clone = sig.clone()
    clone.link(s(app, "t.mul", 2))
    assert "link" not in sig.options  # a clone's lists are its own


def test_pipe_composition_rules(app: Celeriac) -> None:
    a, b, c = s(app, "t.add", 1, 1), s(app, "t.mul", 2), s(app, "t.mul", 3)
    assert isinstance(a | b, chain) and [t.task for t in (a | b).tasks] == ["t.add", "t.mul"]
    flat = (a | b) | (c | a)
    assert isinstance(flat, chain) and len(flat.tasks) == 4  # chains flatten
    assert len(chain(chain(a, b), c).tasks) == 3
    upgraded = group(a, a) | s(app, "t.xsum")
    assert isinstance(upgraded, chord) and upgraded.body is not None
    in_chain = chain(a, group(b, c), s(app, "t.xsum"))
    assert [type(t) for t in in_chain.tasks] == [Signature, chord]  # group | sig -> chord
    extended = chord([a], s(app, "t.xsum")) | b
    assert isinstance(extended, chord) and isinstance(extended.body, chain)
    composed = a
    composed |= b
    assert isinstance(composed, chain)
    assert isinstance(dict(a) | b, chain)  # a plain dict on the left is a signature too


def test_repr(app: Celeriac) -> None:
    a = s(app, "t.add", 4, 4)
    assert repr(chain(a, s(app, "t.mul", 8))) == "t.add(4, 4) | t.mul(8)"
    assert repr(group(a, a)) == "group([t.add(4, 4), t.add(4, 4)])"


# -- freezing ----------------------------------------------------------------------------------
def test_freeze_chain_links_parents(app: Celeriac) -> None:
    c = chain(s(app, "t.add", 4, 4), s(app, "t.mul", 8), s(app, "t.mul", 10))
    result = c.freeze()
    assert result.id == c.tasks[-1].id
    assert result.parent is not None and result.parent.id == c.tasks[1].id
    assert result.parent.parent is not None and result.parent.parent.id == c.tasks[0].id


def test_freeze_chord_header_indexes_are_flat_and_ordered(app: Celeriac) -> None:
    a = s(app, "t.add", 1, 1)
    nested = chord([group(a, a), chain(a, group(a, a)), chord([a], s(app, "t.xsum")), a], a)
    body_result = nested.freeze()
    header = nested.header
    assert header._join_count() == 6
    reporting = [t for t in leaves(header) if t["options"].get("group_id") == header.id]
    assert [t["options"]["group_index"] for t in reporting] == [0, 1, 2, 3, 4, 5]
    assert all(t["options"]["chord"]["task"] == "t.add" for t in reporting)
    assert isinstance(body_result.parent, GroupResult) and body_result.parent.id == header.id
    assert nested.freeze().id == body_result.id  # freezing again changes nothing


def test_apply_async_does_not_change_the_signature(app: Celeriac) -> None:
    c = chord([s(app, "t.add", 1, 1)], s(app, "t.xsum"))
    before = roundtrip(c)
    c.apply_async()
    assert roundtrip(c) == before


# -- plans -------------------------------------------------------------------------------------
def plan_of(app: Celeriac, sig: Signature[Any], *args: Any) -> tuple[Plan, Any]:
    plan = Plan(app)
    return plan, sig.clone()._plan(plan, args, {}, {})


def test_chain_plan_sends_the_first_task_with_the_rest_reversed(app: Celeriac) -> None:
    c = chain(s(app, "t.add", 1, 2), s(app, "t.add", 3), s(app, "t.mul", 2))
    plan, result = plan_of(app, c)
    (call,) = plan.calls
    assert (call.name, call.args) == ("t.add", (1, 2))
    assert [step["task"] for step in call.options["chain"]] == ["t.mul", "t.add"]
    assert call.options["chain"][0]["options"]["task_id"] == result.id


def test_chord_plan_stores_the_size_first(app: Celeriac) -> None:
    plan, result = plan_of(app, chord([s(app, "t.add", i, i) for i in range(3)], s(app, "t.xsum")))
    ((group_id, size),) = plan.chord_sizes
    assert size == 3 and [c.options["group_index"] for c in plan.calls] == [0, 1, 2]
    assert {c.options["group_id"] for c in plan.calls} == {group_id}
    body = plan.calls[0].options["chord"]
    assert body["options"]["task_id"] == result.id and body["options"]["group_id"] == group_id


def test_group_partial_args_go_to_every_mutable_member(app: Celeriac) -> None:
    g = group(s(app, "t.add", 1), app.tasks["t.add"].si(5, 5))
    plan, result = plan_of(app, g, 10)
    assert [c.args for c in plan.calls] == [(10, 1), (5, 5)]
    assert isinstance(result, GroupResult) and len(result) == 2


def test_empty_chord_header_sends_the_body_with_no_results(app: Celeriac) -> None:
    plan, _ = plan_of(app, chord([], s(app, "t.xsum")))
    assert plan.chord_sizes == [] and [(c.name, c.args) for c in plan.calls] == [("t.xsum", ([],))]


def test_chord_without_backend_names_the_body(app: Celeriac) -> None:
    bare = Celeriac("bare", broker="memory://canvas-bare")
    with pytest.raises(ImproperlyConfigured, match=r"t\.xsum"):
        chord([Signature("t.add", (1, 1), app=bare)], Signature("t.xsum", app=bare)).delay()


def test_unknown_task_is_named_when_applied_here(app: Celeriac) -> None:
    with pytest.raises(NotRegistered, match=r"nope\.missing"):
        signature("nope.missing", args=(1,), app=app).apply()
    with pytest.raises(NotRegistered, match=r"nope\.missing"):
        chain(s(app, "t.add", 1, 1), signature("nope.missing", app=app)).apply()


def test_arguments_are_checked_before_anything_is_sent(app: Celeriac) -> None:
    before = app.transport.qsize("celery")
    with pytest.raises(TypeError, match=r"t\.add"):
        group(s(app, "t.add", 1, 1), s(app, "t.add", 1, 2, 3)).apply_async()
    assert app.transport.qsize("celery") == before


# -- eager -------------------------------------------------------------------------------------
def test_eager_primitives(app: Celeriac) -> None:
    add, mul, xsum = (app.tasks[n] for n in ("t.add", "t.mul", "t.xsum"))
    res = chain(add.s(4, 4), mul.s(8), mul.s(10)).apply()
    assert (res.get(), res.parent.get(), res.parent.parent.get()) == (640, 64, 8)
    assert group(add.s(i, i) for i in range(4)).apply().get() == [0, 2, 4, 6]
    assert chord([add.s(i, i) for i in range(4)], xsum.s()).apply().get() == 12
    assert xmap(xsum.s(), [range(3), range(4)]).apply().get() == [3, 6]
    assert xstarmap(add.s(), [(1, 1), (2, 2)]).apply().get() == [2, 4]
    assert chunks(add.s(), [(i, i) for i in range(4)], 3).apply().get() == [[0, 2, 4], [6]]


def test_task_always_eager_runs_workflows_here(app: Celeriac) -> None:
    app.conf.task_always_eager = True
    add, xsum = app.tasks["t.add"], app.tasks["t.xsum"]
    assert (add.s(1, 1) | add.s(2))().get() == 4
    assert chord([add.s(1, 1), add.s(2, 2)], xsum.s())().get() == 6
    assert ~add.starmap([(1, 2)]) == [3]


def test_eager_chord_with_a_failing_header_raises(app: Celeriac) -> None:
    with pytest.raises((ValueError, ChordError)):
        chord([app.tasks["t.boom"].s()], app.tasks["t.xsum"].s()).apply().get()


# -- results -----------------------------------------------------------------------------------
def test_result_tuples_round_trip(app: Celeriac) -> None:
    single = AsyncResult("a", app=app, parent=AsyncResult("p", app=app))
    back = result_from_tuple(json.loads(json.dumps(single.as_tuple())), app)
    assert isinstance(back, AsyncResult) and back.id == "a" and back.parent.id == "p"
    grp = GroupResult("g", [AsyncResult("x", app=app), AsyncResult("y", app=app)], app=app)
    back = result_from_tuple(json.loads(json.dumps(grp.as_tuple())), app)
    assert isinstance(back, GroupResult) and [r.id for r in back] == ["x", "y"]
    assert result_from_tuple("plain-id", app).id == "plain-id"
    assert result_from_tuple(42, app) is None


def test_is_composite_and_leaves(app: Celeriac) -> None:
    c = chord(
        [s(app, "t.add", 1, 1), chain(s(app, "t.add", 2, 2), s(app, "t.mul", 2))], s(app, "t.xsum")
    )
    assert is_composite(c) and not is_composite(s(app, "t.add"))
    assert [leaf["task"] for leaf in leaves(roundtrip(c))] == ["t.add", "t.add", "t.mul", "t.xsum"]
