"""Acks and redelivery across implementations: a worker SIGKILLed mid-task leaves its messages
in kombu's ``unacked`` hash / ``unacked_index`` zset, and a worker of the other kind restores
and runs them once the visibility timeout has passed.

The fleet here uses a 5 s ``visibility_timeout`` on both sides. Restores happen:

* Celery 5.7 (kombu 5.7): at startup and then every ``unacked_restore_interval`` (1 s here, with
  ``unacked_restore_throttle`` 1); its worker is started right after the kill and restores
  the messages by itself once they are old enough.
* Celery 5.3 (kombu 5.3): at startup, then only every ~100 s; its worker is started once the
  abandoned deliveries are older than the visibility timeout (a condition on the
  ``unacked_index`` scores, not a sleep).
* Celeriac: when fetching, at most every ``unacked_restore_interval`` (min(5 s, lease/4)).

``interop.hang`` marks a gate and hangs on its first run, so the killed worker is surely
inside the task; a redelivered run returns at once and reports ``redelivered``. The Celery side
declares it ``acks_late=True`` (Celery acknowledges before running by default, and an early-
acked message is simply lost with the worker; Celeriac acknowledges late by default).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet import Fleet, Proc, wait_until
from interop_support import VERSION_IDS, VERSIONS, celery_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

VISIBILITY = 5.0


@pytest.fixture(scope="module")
def rfleet(interop_redis: Any, run_id: str, interop_logs: Path) -> Iterator[Fleet]:
    fleet = Fleet(
        "redeliver", run_id, interop_redis, celery_env, interop_logs, visibility_timeout=VISIBILITY
    )
    yield fleet
    fleet.close()


def unacked(fleet: Fleet) -> dict[str, tuple[str, str, float | None]]:
    """task id -> (delivery tag, routing key, unacked_index score) of every held delivery."""
    found: dict[str, tuple[str, str, float | None]] = {}
    for tag, value in fleet.redis.hgetall(fleet.key("unacked")).items():
        envelope, _exchange, routing_key = json.loads(value)
        score = fleet.redis.zscore(fleet.key("unacked_index"), tag)
        found[envelope["headers"]["id"]] = (tag.decode(), routing_key, score)
    return found


def gate_marked(fleet: Fleet, marker: str) -> bool:
    return bool(fleet.redis.exists(fleet.key(f"interop.gate.{marker}")))


def held_by_killed_worker(fleet: Fleet, worker: Proc, ids: list[str], queue: str) -> None:
    """Wait until ``ids`` are all in ``unacked`` (taken by ``worker``), then SIGKILL it."""
    wait_until(
        lambda: set(ids) <= set(unacked(fleet)),
        15,
        f"deliveries {ids} in unacked",
        fleet.diagnostics,
    )
    worker.kill()
    left = unacked(fleet)
    for task_id in ids:
        tag, routing_key, score = left[task_id]
        assert routing_key == queue, left[task_id]
        assert score is not None, f"{tag} is in unacked but not in unacked_index"


def wait_expired(fleet: Fleet, ids: list[str]) -> None:
    """Until every delivery of ``ids`` is older than the visibility timeout."""

    def expired() -> bool:
        left = unacked(fleet)
        cutoff = time.time() - VISIBILITY - 0.2
        return all((left[i][2] or 0) < cutoff for i in ids if i in left)

    wait_until(expired, VISIBILITY + 10, f"leases of {ids} expired", fleet.diagnostics)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_celery_worker_restores_what_a_killed_celeriac_worker_held(
    rfleet: Fleet, version: str
) -> None:
    celery_env(version)
    queue = f"{rfleet.name}.to-celery-{uuid.uuid4().hex[:6]}"
    doomed = rfleet.celeriac_worker([queue], key=f"celeriac-doomed-{version}")
    client = rfleet.celery_client(version)  # reads the results at the end
    sender = rfleet.celeriac_client(None)
    markers = [uuid.uuid4().hex for _ in range(2)]
    hang_ids = [sender.call("interop.hang", [m], queue=queue) for m in markers]
    wait_until(
        lambda: all(gate_marked(rfleet, m) for m in markers),
        15,
        "both hang tasks started on the Celeriac worker",
        rfleet.diagnostics,
    )
    # both pool threads are busy: these two are prefetched, not started
    waiting_ids = [sender.call("interop.inspect", [i], queue=queue) for i in range(2)]
    held_by_killed_worker(rfleet, doomed, hang_ids + waiting_ids, queue)
    rfleet.retire(f"celeriac-doomed-{version}")

    if version == "5.3":  # restores at startup only (then every ~100 s)
        wait_expired(rfleet, hang_ids + waiting_ids)
    rfleet.celery_worker(version, [queue], key=f"celery-rescuer-{version}")
    try:
        for task_id in hang_ids:
            outcome = client.outcome(task_id, timeout=30)
            assert outcome.state == "SUCCESS", f"{outcome}\n{rfleet.diagnostics()}"
            assert outcome.value["impl"] == "celery"
            assert outcome.value["redelivered"] is True, outcome.value
        for task_id in waiting_ids:
            outcome = client.outcome(task_id, timeout=30)
            assert outcome.state == "SUCCESS", f"{outcome}\n{rfleet.diagnostics()}"
            assert (outcome.value["impl"], outcome.value["redelivered"]) == ("celery", True)
        wait_until(
            lambda: not set(hang_ids + waiting_ids) & set(unacked(rfleet)),
            10,
            "the Celery worker's acks emptied unacked",
            rfleet.diagnostics,
        )
    finally:
        rfleet.retire(f"celery-rescuer-{version}")


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_celeriac_worker_restores_what_a_killed_celery_worker_held(
    rfleet: Fleet, version: str
) -> None:
    celery_env(version)
    queue = f"{rfleet.name}.to-celeriac-{uuid.uuid4().hex[:6]}"
    doomed = rfleet.celery_worker(version, [queue], key=f"celery-doomed-{version}")
    client = rfleet.celery_client(version)
    markers = [uuid.uuid4().hex for _ in range(2)]
    hang_ids = [client.call("interop.hang", [m], queue=queue) for m in markers]
    wait_until(
        lambda: all(gate_marked(rfleet, m) for m in markers),
        15,
        "both hang tasks started on the Celery worker",
        rfleet.diagnostics,
    )
    held_by_killed_worker(rfleet, doomed, hang_ids, queue)
    rfleet.retire(f"celery-doomed-{version}")

    rfleet.celeriac_worker([queue], key=f"celeriac-rescuer-{version}")
    try:
        for task_id in hang_ids:
            outcome = client.outcome(task_id, timeout=30)
            assert outcome.state == "SUCCESS", f"{outcome}\n{rfleet.diagnostics()}"
            assert outcome.value["impl"] == "celeriac"
            assert outcome.value["redelivered"] is True, outcome.value
        wait_until(
            lambda: not set(hang_ids) & set(unacked(rfleet)),
            10,
            "the Celeriac worker's acks emptied unacked",
            rfleet.diagnostics,
        )
    finally:
        rfleet.retire(f"celeriac-rescuer-{version}")


@pytest.mark.xfail(
    strict=True,
    reason="Celeriac's own bookkeeping of a delivery (<queue>\\x06\\x16celeriac.held and "
    "celeriac.deliveries) is removed only by a Celeriac ack/dead-letter: when a Celery worker "
    "restores and acks what a killed Celeriac worker held, both entries stay forever",
)
def test_no_celeriac_bookkeeping_left_after_a_celery_worker_finished_the_job(
    rfleet: Fleet,
) -> None:
    celery_env("5.x")
    queue = f"{rfleet.name}.leak-{uuid.uuid4().hex[:6]}"
    doomed = rfleet.celeriac_worker([queue], key="celeriac-doomed-leak")
    client = rfleet.celery_client("5.x")
    marker = uuid.uuid4().hex
    task_id = rfleet.celeriac_client(None).call("interop.hang", [marker], queue=queue)
    wait_until(lambda: gate_marked(rfleet, marker), 15, "hang started", rfleet.diagnostics)
    held_by_killed_worker(rfleet, doomed, [task_id], queue)
    tag = unacked(rfleet)[task_id][0]
    rfleet.retire("celeriac-doomed-leak")
    rfleet.celery_worker("5.x", [queue], key="celery-rescuer-leak")
    try:
        assert client.outcome(task_id, timeout=30).state == "SUCCESS", rfleet.diagnostics()
        wait_until(lambda: task_id not in unacked(rfleet), 10, "acked", rfleet.diagnostics)
    finally:
        rfleet.retire("celery-rescuer-leak")
    held = rfleet.redis.hget(rfleet.key(f"{queue}\x06\x16celeriac.held"), tag)
    count = rfleet.redis.hget(rfleet.key("celeriac.deliveries"), tag)
    assert (held, count) == (None, None), f"left behind for {tag}: held={held!r} count={count!r}"
