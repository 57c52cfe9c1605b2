"""Helpers for the golden tests: where the Celery captures are, loading them, walking them.

Fixtures live in ``$CELERIAC_SHARED_DIR/fixtures/celery-wire`` (default ``<repo>/../shared``):
the top folder holds Celery 5.7.0 captures, ``compat-celery-5.3.6/`` the same captures made with
Celery 5.3.6. Every test module parametrizes over ``VERSIONS`` so both are checked.

``COVERAGE`` maps every fixture file to the test module that checks it;
``test_coverage.py`` fails when a fixture file is missing from the map (a new capture needs a
test) or when the named module does not mention the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.envelope import Envelope, dumps_envelope, loads_envelope, mark_redelivered
from celeriac.protocol.serialization import loads

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CELERIAC_SHARED_DIR", REPO.parent / "shared"))
WIRE = SHARED / "fixtures" / "celery-wire"
COMPAT = "compat-celery-5.3.6"
VERSIONS = ("5.7.0", "5.3.6")
TRUNCATED = "...("  # how the capture script shortened long command arguments

COVERAGE: dict[str, str] = {
    # task messages, Redis
    "redis-task-add.json": "test_task_messages",
    "redis-task-countdown.json": "test_task_messages",
    "redis-task-eta.json": "test_task_messages",
    "redis-task-expires.json": "test_task_messages",
    "redis-task-expires-datetime.json": "test_task_messages",
    "redis-task-queue-other.json": "test_task_messages",
    "redis-task-retries.json": "test_task_messages",
    "redis-task-link.json": "test_task_messages",
    "redis-task-priority.json": "test_task_messages",
    "redis-task-options-all.json": "test_task_messages",
    "redis-task-chain.json": "test_task_messages",
    "redis-task-group.json": "test_task_messages",
    "redis-task-chord.json": "test_task_messages",
    "redis-task-chord-unlock.json": "test_task_messages",
    "redis-task-kwargs-types.json": "test_task_messages",
    "redis-task-add-protocol1.json": "test_task_messages",
    "redis-task-retry.json": "test_task_messages",
    "redis-task-chain-steps.json": "test_task_messages",
    "redis-task-link-executed.json": "test_task_messages",
    # task messages, RabbitMQ
    "amqp-task-add.json": "test_amqp",
    "amqp-task-options.json": "test_amqp",
    "amqp-task-group-member.json": "test_amqp",
    "amqp-task-priority.json": "test_amqp",
    "amqp-result-rpc.json": "test_amqp",
    "amqp-control.json": "test_amqp",
    "amqp-events.json": "test_amqp",
    "amqp-declarations.json": "test_amqp",
    # results
    "result-success.json": "test_results",
    "result-started.json": "test_results",
    "result-started-acks-late.json": "test_results",
    "result-failure.json": "test_results",
    "result-failure-custom.json": "test_results",
    "result-retry.json": "test_results",
    "result-revoked.json": "test_results",
    "result-revoked-expired.json": "test_results",
    "result-success-types.json": "test_results",
    "result-chain-parent.json": "test_results",
    "result-group.json": "test_results",
    "result-chord-join.json": "test_results",
    # Redis broker internals
    "redis-unacked.json": "test_redis_internals",
    "redis-restore-at-shutdown.json": "test_redis_internals",
    "redis-visibility-restore.json": "test_redis_internals",
    "redis-keys-and-channels.json": "test_redis_internals",
    "redis-worker-startup-commands.json": "test_redis_internals",
    # events and remote control
    "event-task-multi.json": "test_events_control",
    "event-task-sent.json": "test_events_control",
    "event-task-received.json": "test_events_control",
    "event-task-started.json": "test_events_control",
    "event-task-succeeded.json": "test_events_control",
    "event-task-failed.json": "test_events_control",
    "event-task-retried.json": "test_events_control",
    "event-task-revoked.json": "test_events_control",
    "event-worker-online.json": "test_events_control",
    "event-worker-heartbeat.json": "test_events_control",
    "event-worker-offline.json": "test_events_control",
    "control-ping.json": "test_events_control",
    "control-inspect-active.json": "test_events_control",
    "control-revoke.json": "test_events_control",
    "control-hello.json": "test_events_control",
    # the index of each folder
    "_index.json": "test_coverage",
}


def folder(version: str) -> Path:
    return WIRE if version == VERSIONS[0] else WIRE / COMPAT


def require_fixtures() -> None:
    if not WIRE.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Celery wire fixtures not found at {WIRE}")
        pytest.skip(f"Celery wire fixtures not found at {WIRE} (set CELERIAC_SHARED_DIR)")


@cache
def _load(version: str, name: str) -> str:
    return (folder(version) / name).read_text(encoding="utf-8")


def load(version: str, name: str) -> Any:
    """The parsed fixture file (a fresh copy: tests may mutate it)."""
    require_fixtures()
    return json.loads(_load(version, name))


def fixture_files(version: str) -> list[str]:
    require_fixtures()
    return sorted(p.name for p in folder(version).glob("*.json"))


def walk_strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string value in a fixture, with its path (for error messages)."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk_strings(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from walk_strings(value, f"{path}[{i}]")


def complete_json(text: str) -> Any | None:
    """``text`` parsed as JSON when it is a complete (not shortened) JSON object or array."""
    if not text.startswith(("{", "[")) or TRUNCATED in text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def is_envelope(value: Any) -> bool:
    return isinstance(value, dict) and "body" in value and "properties" in value


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def sig(task: str, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A signature dict as Celery's ``task.s(*args, **kwargs)`` serialises it."""
    return {
        "task": task,
        "args": args,
        "kwargs": kwargs,
        "options": options or {},
        "subtask_type": None,
        "immutable": False,
    }


def open_envelope(raw: str) -> tuple[Envelope, Any]:
    """Parse a captured envelope and its JSON body; check ``dumps_envelope`` rebuilds it."""
    envelope = loads_envelope(raw)
    message = envelope.message
    body = loads(message.body, message.content_type, message.content_encoding, accept=["json"])
    again = dumps_envelope(
        message,
        routing_key=envelope.routing_key,
        exchange=envelope.exchange,
        delivery_tag=envelope.delivery_tag,
    )
    if envelope.redelivered:
        again = mark_redelivered(again)
    assert again == raw.encode("utf-8")
    return envelope, body
