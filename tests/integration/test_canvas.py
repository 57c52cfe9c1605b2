"""The canvas end to end: a real worker (threads, concurrency 4) on the in-memory, SQLite and
Redis brokers and result backends. Every primitive, their nestings, results in order, failure
propagation, retries and redeliveries inside a chord header, ``Task.replace``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from canvas_support import BACKENDS, Env, key, started

from celeriac import chain, chord, group, signature, states
from celeriac.canvas import Plan, send_plan
from celeriac.exceptions import ChordError, ImproperlyConfigured, NotRegistered
from celeriac.result import GroupResult

pytestmark = pytest.mark.timeout(120)

T = 10  # seconds any single wait may take


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from started(request.param, tmp_path_factory.mktemp(request.param))


# -- chains ------------------------------------------------------------------------------------
def test_chain_results_and_parents(env: Env) -> None:
    add, mul = env.t["add"], env.t["mul"]
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=T) == 640
    assert res.parent.get(timeout=T) == 64
    assert res.parent.parent.get(timeout=T) == 8
    assert res.parent.parent.parent is None
    first = env.app.AsyncResult(res.parent.parent.id)
    assert [c.id for c in first.children] == [res.parent.id]  # children from the result record
    immutable = (add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()
    assert (immutable.get(timeout=T), immutable.parent.get(timeout=T)) == (16, 8)


def test_partial_chain_and_chain_of_chains(env: Env) -> None:
    add, mul = env.t["add"], env.t["mul"]
    assert (add.s(4) | mul.s(8))(16).get(timeout=T) == 160
    assert (add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8)))().get(timeout=T) == 352


def test_a_failing_step_fails_the_rest_of_the_chain(env: Env) -> None:
    add, boom = env.t["add"], env.t["boom"]
    res = chain(add.s(1, 1), boom.s(), add.s(3), add.s(4))()
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=T)  # the last step is marked failed: no hang
    assert res.parent.state == states.FAILURE
    assert res.parent.parent.parent.get(timeout=T) == 2


def test_link_callbacks_children_and_collect(env: Env) -> None:
    add, mul = env.t["add"], env.t["mul"]
    res = add.apply_async((2, 2), link=mul.s(16))
    assert res.get(timeout=T) == 4
    (child,) = res.children
    assert child.get(timeout=T) == 64
    assert [value for _, value in res.collect(timeout=T)] == [4, 64]


# -- groups ------------------------------------------------------------------------------------
def test_group_results_in_order(env: Env) -> None:
    slow_add = env.t["slow_add"]
    res = group(slow_add.s(i, i) for i in range(20))()
    assert res.get(timeout=T) == [2 * i for i in range(20)]
    assert res.ready() and res.successful() and not res.failed()
    assert res.completed_count() == 20 and len(res) == 20


def test_group_result_save_and_restore(env: Env) -> None:
    res = group(env.t["add"].s(i, 1) for i in range(3))()
    res.save()
    restored = GroupResult.restore(res.id, app=env.app)
    assert restored is not None and restored.get(timeout=T) == [1, 2, 3]


def test_empty_and_single_task_groups(env: Env) -> None:
    add, xsum = env.t["add"], env.t["xsum"]
    assert group([])().get(timeout=T) == []
    assert group(add.s(1, 2))().get(timeout=T) == [3]
    assert chain(add.s(1, 1), group(add.s(1)), xsum.s())().get(timeout=T) == 3  # still a list


def test_group_with_a_failing_member(env: Env) -> None:
    res = group(env.t["add"].s(1, 1), env.t["boom"].s())()
    with pytest.raises(ValueError):
        res.get(timeout=T)
    assert res.failed() and res.completed_count() == 1
    assert res.get(timeout=T, propagate=False)[0] == 2


# -- chords ------------------------------------------------------------------------------------
def test_chord_results_in_header_order(env: Env) -> None:
    slow_add, collect = env.t["slow_add"], env.t["collect"]
    k = key()
    res = chord((slow_add.s(i, i) for i in range(30)), collect.s(k))()
    assert res.get(timeout=T) == [2 * i for i in range(30)]
    assert isinstance(res.parent, GroupResult) and len(res.parent) == 30
    assert env.tally.counts[k] == 1


def test_group_piped_into_a_task_is_a_chord(env: Env) -> None:
    add, xsum = env.t["add"], env.t["xsum"]
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=T) == 90
    assert chord(add.s(i, i) for i in range(10))(xsum.s()).get(timeout=T) == 90


def test_group_in_a_chain_becomes_a_chord_and_gets_the_result(env: Env) -> None:
    add, mul, xsum = env.t["add"], env.t["mul"], env.t["xsum"]
    res = (add.s(1, 1) | group(mul.s(i) for i in range(4)) | xsum.s())()
    assert res.get(timeout=T) == 2 * (0 + 1 + 2 + 3)
    ending = (add.s(4, 4) | group(add.si(i, i) for i in range(3)))()
    assert isinstance(ending, GroupResult)
    assert ending.get(timeout=T) == [0, 2, 4] and ending.parent.get(timeout=T) == 8


def test_nested_workflows(env: Env) -> None:
    add, mul, xsum = env.t["add"], env.t["mul"], env.t["xsum"]
    in_group = group(add.s(1, 1) | mul.s(3), add.s(5, 5))()
    assert in_group.get(timeout=T) == [6, 10]
    in_chord = chord([add.s(1, 1) | mul.s(3), add.s(5, 5)], xsum.s())()
    assert in_chord.get(timeout=T) == 16
    of_chords = chain(
        chord([add.s(1, 1), add.s(2, 2)], xsum.s()), chord([add.s(10), add.s(20)], xsum.s())
    )()
    assert of_chords.get(timeout=T) == 6 + 10 + 6 + 20
    chord_in_chord = chord([chord([add.s(1, 1), add.s(2, 2)], xsum.s()), add.s(100, 0)], xsum.s())()
    assert chord_in_chord.get(timeout=T) == 106
    group_of_chords = group(
        chord([add.s(1, 1)], xsum.s()), chord([add.s(3, 3), add.s(4, 4)], xsum.s())
    )()
    assert group_of_chords.get(timeout=T) == [2, 14]
    nested_header = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], xsum.s())()
    assert nested_header.get(timeout=T) == 12  # flattened: [2, 4, 6]
    group_body = chord([add.s(1, 1), add.s(2, 2)], group(xsum.s(), xsum.s()))()
    assert group_body.get(timeout=T) == [6, 6]
    chain_body = chord([add.s(1, 1), add.s(2, 2)], xsum.s() | mul.s(10))()
    assert chain_body.get(timeout=T) == 60 and chain_body.parent.get(timeout=T) == 6
    assert chord([], xsum.s())().get(timeout=T) == 0


def test_map_starmap_chunks(env: Env) -> None:
    add, xsum = env.t["add"], env.t["xsum"]
    assert ~xsum.map([range(10), range(100)]) == [45, 4950]
    assert ~add.starmap(zip(range(10), range(10), strict=True)) == list(range(0, 20, 2))
    res = add.chunks(zip(range(20), range(20), strict=True), 5)()
    assert res.get(timeout=T) == [[2 * i for i in range(j, j + 5)] for j in range(0, 20, 5)]
    skewed = (
        add.chunks(zip(range(4), range(4), strict=True), 2).group().skew(start=0.0, step=0.05)()
    )
    assert skewed.get(timeout=T) == [[0, 2], [4, 6]]


def test_a_failing_header_task_fails_the_chord(env: Env) -> None:
    add, boom, collect, on_error, record = (
        env.t[n] for n in ("add", "boom", "collect", "on_error", "record")
    )
    k, errors, old_style = key(), key(), key()
    c = chord([add.s(4, 4), boom.s(7), add.s(8, 8)], collect.s(k))
    c.link_error(on_error.s(errors))
    c.link_error(record.s(old_style))
    res = c()
    with pytest.raises(ChordError, match=r"Dependency .* raised ValueError\('boom', 7\)") as info:
        res.get(timeout=T)
    failed_id = res.parent[1].id
    assert failed_id in str(info.value)
    assert res.state == states.FAILURE and "ChordError" in (res.traceback or "")
    ((request_id, exc_type, _),) = env.tally.wait(errors, 1)
    assert (request_id, exc_type) == (res.id, "ChordError")
    assert env.tally.wait(old_style, 1) == [res.id]  # an old-style errback gets the body's id
    assert env.tally.counts[k] == 0


def test_chords_that_could_never_complete_fail_instead(env: Env) -> None:
    add, boom, xsum = env.t["add"], env.t["boom"], env.t["xsum"]
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    expired = chord([add.s(1, 1), add.s(2, 2).set(expires=past)], xsum.s())()
    with pytest.raises(ChordError, match="TaskRevokedError"):
        expired.get(timeout=T)
    unknown = chord(
        [add.s(1, 1), signature("c.not_registered", args=(1,), app=env.app)], xsum.s()
    )()
    with pytest.raises(ChordError, match="NotRegistered"):
        unknown.get(timeout=T)
    stopped_chain = chord([add.s(1, 1), boom.s() | add.s(1)], xsum.s())()
    with pytest.raises(ChordError, match="boom"):
        stopped_chain.get(timeout=T)
    outer = chord([chord([boom.s()], xsum.s()), add.s(1, 1)], xsum.s())()
    with pytest.raises(ChordError, match="Dependency"):
        outer.get(timeout=T)


def test_retries_inside_a_chord_header(env: Env) -> None:
    flaky, collect = env.t["flaky"], env.t["collect"]
    k = key()
    res = chord((flaky.s(i, k, i % 3) for i in range(6)), collect.s(k))()
    assert res.get(timeout=T) == list(range(6))
    assert env.tally.counts[k] == 1
    assert env.tally.counts[f"{k}:5"] == 3  # two retries, then success


def test_redelivered_header_tasks_count_once(env: Env) -> None:
    add, collect = env.t["add"], env.t["collect"]
    k = key()
    before = env.worker.state.succeeded
    plan = Plan(env.app)
    result = chord([add.s(i, i) for i in range(5)], collect.s(k)).clone()._plan(plan, (), {}, {})
    duplicates = [call for call in plan.calls if call.options["group_index"] in (0, 3)]
    plan.calls += duplicates  # the same messages twice: as after a redelivery
    send_plan(plan)
    assert result.get(timeout=T) == [0, 2, 4, 6, 8]
    assert env.worker.state.wait_for(lambda s: s.succeeded >= before + 8, timeout=T)
    assert env.tally.counts[k] == 1


@pytest.mark.slow
def test_a_chord_of_a_thousand_tasks_fires_its_body_once(env: Env) -> None:
    add, collect = env.t["add"], env.t["collect"]
    k = key()
    res = chord((add.s(i, 1) for i in range(1000)), collect.s(k))()
    assert res.get(timeout=60) == [i + 1 for i in range(1000)]
    assert env.tally.counts[k] == 1


# -- replace, errors ---------------------------------------------------------------------------
def test_task_replace(env: Env) -> None:
    replacer, add, xsum = env.t["replacer"], env.t["add"], env.t["xsum"]
    assert replacer.delay(1, "sig").get(timeout=T) == 101
    assert replacer.delay(1, "chain").get(timeout=T) == 20
    assert replacer.delay(1, "group").get(timeout=T) == [1, 2, 3]
    in_chain = (add.s(1, 1) | replacer.s(kind="sig") | add.s(1000))()
    assert in_chain.get(timeout=T) == 1102
    in_chord = chord([replacer.s(1, "sig"), replacer.s(2, "chain"), add.s(1, 1)], xsum.s())()
    assert in_chord.get(timeout=T) == 101 + 30 + 2
    group_in_chain = (add.s(1, 1) | replacer.s(kind="group") | xsum.s())()
    assert group_in_chain.get(timeout=T) == 2 + 3 + 4


def test_get_inside_a_task_is_refused(env: Env) -> None:
    with pytest.raises(RuntimeError, match=r"c\.waits_inside"):
        env.t["waits_inside"].delay().get(timeout=T)


def test_errors_name_the_task(env: Env) -> None:
    with pytest.raises(NotRegistered, match=r"c\.not_registered"):
        signature("c.not_registered", app=env.app).apply()
    from celeriac import Celeriac

    bare = Celeriac("bare", broker="memory://canvas-no-backend")
    with pytest.raises(ImproperlyConfigured, match=r"c\.xsum"):
        chord([signature("c.add", (1, 1), app=bare)], signature("c.xsum", app=bare)).delay()


def test_unknown_tasks_sent_to_a_worker_fail_naming_the_task(env: Env) -> None:
    """Sent, not applied here: the worker's answer names the task (no result left pending)."""
    add, xsum = env.t["add"], env.t["xsum"]
    alone = signature("c.not_registered", args=(1,), app=env.app).delay()
    with pytest.raises(NotRegistered, match=r"c\.not_registered"):
        alone.get(timeout=T)
    in_chain = (add.s(1, 1) | signature("c.not_registered", app=env.app))()
    with pytest.raises(NotRegistered, match=r"c\.not_registered"):
        in_chain.get(timeout=T)
    in_chord = chord([add.s(1, 1), signature("c.not_registered", app=env.app)], xsum.s())()
    with pytest.raises(ChordError, match=r"c\.not_registered"):
        in_chord.get(timeout=T)
