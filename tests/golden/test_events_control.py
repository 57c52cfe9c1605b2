"""Golden tests: events and remote control (pidbox) over Redis, captured from Celery 5.7/5.3.

The event and control modules are built elsewhere; here the envelope and serialization layer is
checked on every captured message: the envelope parses and rebuilds byte for byte, the body
decodes, and it carries the fields the wire spec (sections 6 and 7) lists.
"""

from __future__ import annotations

from typing import Any

import pytest
from golden_support import VERSIONS, load, open_envelope

from celeriac.protocol.message import saferepr

COMMON = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type"}
TASK_FIELDS = {
    "task-sent": {"uuid", "root_id", "parent_id", "name", "args", "kwargs", "retries", "eta"}
    | {"expires", "queue", "exchange", "routing_key"},
    "task-received": {"uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries"}
    | {"eta", "expires"},
    "task-started": {"uuid"},
    "task-succeeded": {"uuid", "result", "runtime"},
    "task-failed": {"uuid", "exception", "traceback"},
    "task-retried": {"uuid", "exception", "traceback"},
    "task-revoked": {"uuid", "terminated", "signum", "expired"},
}
WORKER_FIELDS = {"freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"}
NODE = "worker1@example-host"


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def check_event(event: dict[str, Any], version: str) -> None:
    kind = event["type"]
    extra = TASK_FIELDS.get(kind, WORKER_FIELDS)
    assert set(event) == COMMON | extra, kind
    assert type(event["utcoffset"]) is (float if version == "5.7.0" else int)
    assert isinstance(event["timestamp"], float) and isinstance(event["clock"], int)


def check_event_message(captured: dict[str, Any], version: str) -> list[dict[str, Any]]:
    """An event message: channel, envelope, headers, properties; returns its events."""
    envelope, body = open_envelope(captured["raw"])
    assert captured["redis_command"] == "PUBLISH"
    assert captured["channel"] == f"/0.celeryev/{envelope.routing_key}"
    assert envelope.exchange == "celeryev"
    message = envelope.message
    assert message.headers == {"hostname": captured["decoded"]["headers"]["hostname"]}
    assert (message.properties["delivery_mode"], message.priority) == (1, 0)
    events = body if isinstance(body, list) else [body]
    for event in events:
        check_event(event, version)
        if envelope.routing_key != "task.multi":
            assert envelope.routing_key == event["type"].replace("-", ".")
    assert (envelope.routing_key == "task.multi") == isinstance(body, list)
    return events


@pytest.mark.parametrize(
    "name",
    [
        "event-task-received.json",
        "event-task-started.json",
        "event-task-succeeded.json",
        "event-task-failed.json",
        "event-task-retried.json",
        "event-task-revoked.json",
    ],
)
def test_worker_task_events_come_in_batches(version: str, name: str) -> None:
    data = load(version, name)
    event = data["event"]
    check_event(event, version)
    batch = check_event_message(data["published_in_batch"], version)
    (same,) = [e for e in batch if e["uuid"] == event["uuid"] and e["type"] == event["type"]]
    skip = {"traceback"}  # paths in tracebacks were replaced by placeholders in "event" only
    assert {k: v for k, v in same.items() if k not in skip} == {
        k: v for k, v in event.items() if k not in skip
    }
    if event["type"] == "task-failed":
        assert event["exception"] == "ValueError('boom', 42)"


def test_task_multi_is_a_list(version: str) -> None:
    data = load(version, "event-task-multi.json")
    events = check_event_message(data, version)
    assert len(events) > 1 and all(e["type"].startswith("task-") for e in events)


def test_task_sent_is_single(version: str) -> None:
    data = load(version, "event-task-sent.json")
    (event,) = check_event_message(data, version)
    assert event["type"] == "task-sent" and event["hostname"].startswith("gen")
    assert (event["args"], event["kwargs"]) == (saferepr((2, 3), 1024), saferepr({}, 1024))
    assert (event["queue"], event["exchange"], event["routing_key"]) == ("celery", "", "celery")


@pytest.mark.parametrize(
    "name", ["event-worker-online.json", "event-worker-heartbeat.json", "event-worker-offline.json"]
)
def test_worker_events(version: str, name: str) -> None:
    (event,) = check_event_message(load(version, name), version)
    assert event["type"] == name[len("event-") : -len(".json")]
    assert event["freq"] == 2.0 and event["sw_ident"] == "py-celery" and len(event["loadavg"]) == 3
    assert event["hostname"] == NODE


def check_request(captured: dict[str, Any], method: str, call: bool) -> dict[str, Any]:
    envelope, body = open_envelope(captured["raw"])
    assert captured["channel"] == "/0.celery.pidbox"
    assert (envelope.exchange, envelope.routing_key) == ("celery.pidbox", "")
    assert envelope.message.properties["delivery_mode"] == 2
    headers = envelope.message.headers
    assert set(headers) == {"clock", "expires"} and isinstance(headers["expires"], float)
    assert body["method"] == method
    keys = {"method", "arguments", "destination", "pattern", "matcher"}
    assert set(body) == (keys | {"ticket", "reply_to"} if call else keys)
    if call:
        assert body["reply_to"]["exchange"] == "reply.celery.pidbox"
    return dict(body)


def check_reply(captured: dict[str, Any], request: dict[str, Any]) -> Any:
    envelope, body = open_envelope(captured["raw"])
    oid = request["reply_to"]["routing_key"]
    assert captured["redis_command"] == "LPUSH"
    assert captured["redis_key"] == f"{oid}.reply.celery.pidbox"
    assert (envelope.exchange, envelope.routing_key) == ("reply.celery.pidbox", oid)
    assert envelope.message.properties["delivery_mode"] == 1
    assert envelope.message.headers["ticket"] == request["ticket"]
    assert set(envelope.message.headers) == {"ticket", "clock"}
    assert set(body) == {NODE}
    return body[NODE]


def test_ping(version: str) -> None:
    data = load(version, "control-ping.json")
    request = check_request(data["request"], "ping", call=True)
    assert request["arguments"] == {}
    assert check_reply(data["reply"], request) == {"ok": "pong"}
    assert data["collected_by_client"] == [{NODE: {"ok": "pong"}}]


def test_inspect_active(version: str) -> None:
    data = load(version, "control-inspect-active.json")
    request = check_request(data["request"], "active", call=True)
    assert request["arguments"] == {"safe": None}
    (active,) = check_reply(data["reply"], request)
    assert set(active) == {
        "id",
        "name",
        "args",
        "kwargs",
        "type",
        "hostname",
        "time_start",
        "acknowledged",
        "delivery_info",
        "worker_pid",
    }
    assert set(active["delivery_info"]) == {"exchange", "routing_key", "priority", "redelivered"}
    assert data["collected_by_client"] == {NODE: [active]}


def test_revoke(version: str) -> None:
    data = load(version, "control-revoke.json")
    cast = check_request(data["request_no_reply"], "revoke", call=False)
    call = check_request(data["request_with_reply"], "revoke", call=True)
    task_id = cast["arguments"]["task_id"]
    assert cast["arguments"] == {"task_id": task_id, "terminate": False, "signal": "SIGTERM"}
    assert call["arguments"] == cast["arguments"]
    reply = check_reply(data["reply"], call)
    assert reply == {"ok": f"tasks {{{task_id!r}}} flagged as revoked"}


def test_hello(version: str) -> None:
    data = load(version, "control-hello.json")
    request = check_request(data, "hello", call=True)
    assert request["arguments"] == {"from_node": NODE, "revoked": [] if version == "5.7.0" else {}}
