"""Calling tasks across implementations: a Celery client and a Celeriac worker, and the reverse.

Every test runs four times (``pair``): Celery 5.x and 5.3 clients sending to a Celeriac worker,
and a Celeriac client sending to Celery 5.x and 5.3 workers. The worker reports what it saw
(``interop.inspect``: queue, priority, eta, expires, custom headers, ...), so each test checks
the receiving side's view of what the sending side put on the wire.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from interop_support import Pair, succeeded

pytestmark = [pytest.mark.timeout(90)]

UTC = dt.timezone.utc


def _aware(text: str | None) -> dt.datetime:
    assert text is not None, "the worker saw no datetime"
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_delay_with_args_and_kwargs(pair: Pair) -> None:
    task_id = pair.client.call(
        "interop.inspect", [1, "two", [3.5, None]], {"k": {"nested": True}}, how="delay"
    )
    seen = succeeded(pair, task_id)
    assert seen["impl"] == pair.worker, f"ran by {seen['impl']}, not by the {pair.worker} worker"
    assert seen["args"] == [1, "two", [3.5, None]]
    assert seen["kwargs"] == {"k": {"nested": True}}
    assert seen["id"] == task_id
    assert seen["root_id"] == task_id
    assert seen["parent_id"] is None
    assert seen["queue"] == pair.queue, "delay() goes to the client's task_default_queue"
    assert seen["retries"] == 0
    assert seen["eta"] is None and seen["expires"] is None
    assert str(seen["origin"]).startswith("gen"), f"client origin header: {seen['origin']!r}"


def test_apply_async_returns_value(pair: Pair) -> None:
    task_id = pair.client.call("interop.add", [2, 3])
    assert succeeded(pair, task_id) == 5


def test_send_task_by_name(pair: Pair) -> None:
    task_id = pair.client.call("interop.add", [20, 22], how="send_task", queue=pair.queue)
    assert succeeded(pair, task_id) == 42
    task_id = pair.client.call("interop.inspect", [], {"by": "name"}, how="send_task")
    seen = succeeded(pair, task_id)
    assert (seen["impl"], seen["kwargs"], seen["queue"]) == (
        pair.worker,
        {"by": "name"},
        pair.queue,
    )


def test_countdown(pair: Pair, request: pytest.FixtureRequest) -> None:
    sent = dt.datetime.now(UTC)
    task_id = pair.client.call("interop.inspect", countdown=1.5)
    seen = succeeded(pair, task_id, timeout=8)
    eta = _aware(seen["eta"])
    assert abs((eta - sent).total_seconds() - 1.5) < 1.0, f"eta {eta} is not sent time + 1.5 s"
    assert seen["ran_at"] >= eta.timestamp() - 0.05, (
        f"ran {eta.timestamp() - seen['ran_at']:.3f}s before its eta"
    )


def test_eta(pair: Pair, request: pytest.FixtureRequest) -> None:
    eta = (dt.datetime.now(UTC) + dt.timedelta(seconds=1.5)).replace(microsecond=123456)
    task_id = pair.client.call("interop.inspect", eta=eta)
    seen = succeeded(pair, task_id, timeout=8)
    assert _aware(seen["eta"]) == eta, "the eta arrives exactly, microseconds and offset kept"
    assert seen["ran_at"] >= eta.timestamp() - 0.05


def test_expires_in_the_future_runs(pair: Pair) -> None:
    sent = dt.datetime.now(UTC)
    task_id = pair.client.call("interop.inspect", expires=60)
    seen = succeeded(pair, task_id)
    expires = _aware(seen["expires"])
    assert abs((expires - sent).total_seconds() - 60) < 5, f"expires {expires} is not now + 60 s"


def test_expires_datetime_is_kept(pair: Pair) -> None:
    expires = (dt.datetime.now(UTC) + dt.timedelta(minutes=5)).replace(microsecond=654321)
    task_id = pair.client.call("interop.inspect", expires=expires)
    assert _aware(succeeded(pair, task_id)["expires"]) == expires


def test_priority(pair: Pair) -> None:
    task_id = pair.client.call("interop.inspect", priority=6)
    assert succeeded(pair, task_id)["priority"] == 6


def test_priority_lands_in_kombus_priority_list(pair: Pair) -> None:
    """On Redis priority 5 goes to list ``<queue>\\x06\\x163`` (kombu's steps 0/3/6/9)."""
    parked = f"{pair.fleet.name}.parked-{uuid.uuid4().hex[:8]}"
    pair.client.call("interop.add", [1, 1], queue=parked, priority=5)
    redis = pair.fleet.redis
    lists = {
        step: redis.llen(pair.fleet.key(parked + (f"\x06\x16{step}" if step else "")))
        for step in (0, 3, 6, 9)
    }
    assert lists == {0: 0, 3: 1, 6: 0, 9: 0}, f"{pair.client.label} placed it in {lists}"


def test_countdown_message_waits_in_the_queue_list(
    pair: Pair, request: pytest.FixtureRequest
) -> None:
    """Celery publishes an eta message to the queue list at once (its ``eta`` header says when);
    a Celery worker only ever looks there."""
    parked = f"{pair.fleet.name}.parked-{uuid.uuid4().hex[:8]}"
    pair.client.call("interop.add", [1, 1], queue=parked, countdown=60)
    assert pair.fleet.redis.llen(pair.fleet.key(parked)) == 1, (
        f"not in list {parked!r}; the fleet's keys for it: {pair.fleet.keys(parked + '*')}"
    )


def test_queue_option_routes(pair: Pair) -> None:
    task_id = pair.client.call("interop.inspect", queue=pair.other_queue)
    seen = succeeded(pair, task_id)
    assert (seen["impl"], seen["queue"]) == (pair.worker, pair.other_queue)


def test_task_routes_setting_routes(pair: Pair) -> None:
    task_id = pair.client.call("interop.routed")
    assert succeeded(pair, task_id) == {"impl": pair.worker, "queue": pair.other_queue}


def test_custom_headers(pair: Pair) -> None:
    headers = {"x_interop": "v", "x_num": 5, "x_list": [1, "a"]}
    task_id = pair.client.call("interop.inspect", headers=headers)
    assert succeeded(pair, task_id)["headers"] == headers


TYPED: dict[str, Any] = {
    "aware": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    "naive": dt.datetime(2024, 5, 6, 7, 8, 9),
    "date": dt.date(2024, 5, 6),
    "time": dt.time(7, 8, 9, 10),
    "decimal": decimal.Decimal("1.10"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "utf8": b"bytes",
    "binary": b"\xff\x00\x01",
    "big": 2**70,
    "text": "naïve ☃",
}
TYPE_NAMES = {
    "aware": "datetime(aware)",
    "naive": "datetime(naive)",
    "date": "date",
    "time": "time",
    "decimal": "Decimal",
    "uuid": "UUID",
    "utf8": "bytes",
    "binary": "bytes",
    "big": "int",
    "text": "str",
}


def test_json_type_tags_both_ways(pair: Pair) -> None:
    """kombu's ``__type__`` wrappers: the worker decodes them into the Python types, and its
    result carries them back to the client as the same values."""
    task_id = pair.client.call("interop.echo", [TYPED["decimal"], (1, 2)], dict(TYPED))
    value = succeeded(pair, task_id)
    assert value["types"] == [["Decimal", ["int", "int"]], TYPE_NAMES], "types the worker saw"
    assert value["args"] == [TYPED["decimal"], [1, 2]]
    assert value["kwargs"] == TYPED
    for name, expected in TYPED.items():
        got = value["kwargs"][name]
        assert type(got) is type(expected), f"{name}: the client read {type(got).__name__}"
        if isinstance(expected, dt.datetime):
            assert (got.tzinfo is None) == (expected.tzinfo is None), f"{name}: offset changed"
