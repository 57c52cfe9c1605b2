"""Workflows across implementations: a chain, a group and a chord built by one side's client
and run by the other side's workers, and a mixed fleet sharing a 1,000-task chord.

A chain's later steps and a chord's body are published by the worker that finished the step
before (its own default queue), and a chord is joined in the result backend: Celery 5.7 with
its Lua scripts (``.j/.s/.d/.c``), Celery 5.3 with MULTI (``.j/.s/.t``), Celeriac with the
5.7-compatible script. The mixed test makes both kinds of worker count into one join.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fleet import Fleet, wait_until
from interop_support import VERSION_IDS, VERSIONS, Pair, celery_env, succeeded

pytestmark = [pytest.mark.timeout(120)]


def test_chain(pair: Pair) -> None:
    """(1 + 2 + 3) * 2 through three steps; each step's result names its parent."""
    ids = pair.client.canvas(
        "chain", [["interop.add", [1, 2]], ["interop.add", [3]], ["interop.mul", [2]]]
    )
    assert succeeded(pair, ids["id"]) == 12
    assert len(ids["parents"]) == 2, ids
    assert [succeeded(pair, i) for i in ids["parents"]] == [6, 3]


def test_group(pair: Pair) -> None:
    ids = pair.client.canvas("group", [["interop.add", [i, i]] for i in range(5)])
    assert [succeeded(pair, i) for i in ids["children"]] == [0, 2, 4, 6, 8]


def test_chord(pair: Pair) -> None:
    """The header's results reach the body in header order; the body runs once."""
    counter = uuid.uuid4().hex
    spec = {
        "header": [["interop.mark", [i]] for i in range(6)],
        "body": ["interop.collect", [counter]],
    }
    ids = pair.client.canvas("chord", spec)
    value = succeeded(pair, ids["id"], timeout=30)
    assert value["impl"] == pair.worker
    assert (value["n"], value["sum"], value["ordered"]) == (6, 15, True), value
    assert value["impls"] == {pair.worker: 6}
    assert value["runs"] == 1


# -- one Celery and one Celeriac worker on one queue -------------------------------------------
CHORD_SIZE = 1000


def in_flight(fleet: Fleet, queue: str) -> dict[str, int]:
    """Messages of ``queue`` not yet finished: ready lists, Celeriac's delayed zset, unacked."""
    redis = fleet.redis
    steps = ("", "\x06\x163", "\x06\x166", "\x06\x169")
    ready = sum(redis.llen(fleet.key(queue + step)) for step in steps)
    delayed = redis.zcard(fleet.key(queue + "\x06\x16celeriac.delayed"))
    held = [json.loads(v) for v in redis.hvals(fleet.key("unacked"))]
    unacked = sum(1 for _envelope, _exchange, routing_key in held if routing_key == queue)
    return {"ready": ready, "delayed": delayed, "unacked": unacked}


@pytest.fixture(scope="module", params=VERSIONS, ids=VERSION_IDS)
def mixed(request: pytest.FixtureRequest, fleet: Fleet) -> Iterator[tuple[str, str]]:
    """One Celeriac and one Celery worker of that version on one queue: (version, queue)."""
    version = request.param
    celery_env(version)
    queue = f"{fleet.name}.mixed-{version}"
    fleet.celeriac_worker([queue], key=f"celeriac-mixed-{version}")
    fleet.celery_worker(version, [queue], key=f"celery-mixed-{version}")
    yield version, queue
    # fewer idle processes for what follows
    fleet.retire(f"celeriac-mixed-{version}", f"celery-mixed-{version}")


@pytest.mark.slow
@pytest.mark.parametrize("sender", ["celery", "celeriac"])
def test_mixed_fleet_shares_a_1000_task_chord(
    fleet: Fleet, mixed: tuple[str, str], sender: str
) -> None:
    version, queue = mixed
    client: Any = (
        fleet.celery_client(version, queue=queue)
        if sender == "celery"
        else fleet.celeriac_client(version, queue=queue)
    )
    counter = uuid.uuid4().hex
    spec = {
        "header": [["interop.mark", [i]] for i in range(CHORD_SIZE)],
        "body": ["interop.collect", [counter]],
    }
    started = time.monotonic()
    ids = client.canvas("chord", spec)
    outcome = client.outcome(ids["id"], timeout=90)
    took = time.monotonic() - started
    assert outcome.state == "SUCCESS", f"{outcome} after {took:.1f}s\n{fleet.diagnostics()}"
    value = outcome.value
    assert (value["n"], value["sum"]) == (CHORD_SIZE, CHORD_SIZE * (CHORD_SIZE - 1) // 2)
    assert value["ordered"], "the body got the header's results out of header order"
    assert set(value["impls"]) == {"celery", "celeriac"}, (
        f"one worker ran the whole header: {value['impls']}"
    )
    # nothing is left that could run the body again: then count its runs
    wait_until(
        lambda: in_flight(fleet, queue) == {"ready": 0, "delayed": 0, "unacked": 0},
        30,
        f"queue {queue} drained (last: {in_flight(fleet, queue)})",
        fleet.diagnostics,
    )
    runs = int(fleet.redis.get(fleet.key(f"interop.gate.{counter}")) or 0)
    assert runs == 1, f"the chord body ran {runs} times"
