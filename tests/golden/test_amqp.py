"""Golden tests: RabbitMQ captures (py-amqp transport, ``rpc://`` results), Celery 5.7 and 5.3.

AMQP carries headers, properties and body separately, so a captured message becomes a
``RawMessage`` directly (the raw content-header frame is not parsed here; the decoded, typed
fields in the fixture are used). Task messages decode to the captured fields and encode (from
the call) to the captured headers, properties and body; the AMQP field types of our encoded
headers are the ones py-amqp wrote. Results, events and control bodies decode as captured.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from golden_support import VERSIONS, load, parse_time, sig

from celeriac.protocol.envelope import RawMessage
from celeriac.protocol.message import TaskMessage, decode, encode
from celeriac.protocol.result_meta import exception_from_dict, meta_from_dict, meta_to_dict
from celeriac.protocol.serialization import json_dumps, loads

TASKS = [
    "amqp-task-add.json",
    "amqp-task-options.json",
    "amqp-task-group-member.json",
    "amqp-task-priority.json",
]


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def raw_message(captured: dict[str, Any]) -> RawMessage:
    """A ``RawMessage`` from an AMQP capture's decoded properties and body text."""
    properties = dict(captured["properties"])
    headers = properties.pop("headers")
    content_type = properties.pop("content_type")
    content_encoding = properties.pop("content_encoding")
    body = captured["body_text"].encode("utf-8")
    return RawMessage(body, content_type, content_encoding, headers, properties)


def amqp_type(value: Any) -> str:
    """The AMQP field-table type letter py-amqp writes for ``value``."""
    if value is None:
        return "V"
    if isinstance(value, bool):
        return "t"
    if isinstance(value, int):
        return "I" if -(2**31) <= value < 2**31 else "L"
    letters = {float: "d", str: "S", list: "A", dict: "F"}
    return letters[type(value)]


def typed(value: Any) -> Any:
    """Our value with its AMQP type letters, in the fixture's ``properties_typed`` form."""
    entry: dict[str, Any] = {"type": amqp_type(value), "value": value}
    if isinstance(value, list):
        entry["value"] = [typed(v) for v in value]
    elif isinstance(value, dict):
        entry["value"] = {k: typed(v) for k, v in value.items()}
    return entry


def call_for(name: str, captured: dict[str, Any]) -> tuple[TaskMessage, datetime | None]:
    headers = captured["properties"]["headers"]
    ids = {"id": headers["id"], "origin": headers["origin"]}
    ids["reply_to"] = captured["properties"]["reply_to"]
    if name == "amqp-task-options.json":
        now = parse_time(headers["eta"]) - timedelta(seconds=10)
        message = TaskMessage(
            task="wireapp.add",
            args=(2, 3),
            eta=now + timedelta(seconds=10),
            expires=now + timedelta(seconds=120),
            callbacks=[sig("wireapp.add", 10)],
            extra_headers={"x-custom": "v"},
            timelimit=(30, 20.5),
            retries=2,
            **ids,
        )
        return message, now
    if name == "amqp-task-group-member.json":
        group = {"group": headers["group"], "group_index": 0}
        return TaskMessage(task="wireapp.add", args=(0, 0), **group, **ids), None
    priority = 7 if name == "amqp-task-priority.json" else 0
    return TaskMessage(task="wireapp.add", args=(2, 3), priority=priority, **ids), None


@pytest.mark.parametrize("name", TASKS)
def test_task_message_decodes(version: str, name: str) -> None:
    captured = load(version, name)["message"]
    message = decode(raw_message(captured), accept=["json"])
    headers = captured["properties"]["headers"]
    args, kwargs, embed = captured["body_decoded"]
    assert (message.id, message.task, list(message.args), message.kwargs) == (
        headers["id"],
        headers["task"],
        args,
        kwargs,
    )
    assert message.callbacks == embed["callbacks"]
    assert list(message.timelimit) == headers["timelimit"]
    assert message.priority == captured["properties"]["priority"]
    assert message.group == headers["group"] and message.group_index == headers["group_index"]
    assert (message.eta and message.eta.isoformat()) == headers["eta"]
    assert captured["delivery_info"]["exchange"] == ""
    assert captured["delivery_info"]["routing_key"] == ("prioq" if "priority" in name else "celery")


@pytest.mark.parametrize("name", TASKS)
def test_task_message_encodes_like_celery(version: str, name: str) -> None:
    captured = load(version, name)["message"]
    message, now = call_for(name, captured)
    raw = encode(message, now=now)
    properties = dict(captured["properties"])
    headers = properties.pop("headers")
    assert list(raw.headers.items()) == list(headers.items())
    assert (raw.content_type, raw.content_encoding) == (
        properties.pop("content_type"),
        properties.pop("content_encoding"),
    )
    assert raw.properties == properties
    assert raw.body == captured["body_text"].encode()
    assert {k: typed(v) for k, v in raw.headers.items()} == captured["properties_typed"]["headers"][
        "value"
    ]
    assert bool(raw.properties.get("expiration")) == (captured["property_flags"] == "0xff00")


def test_priority_queue_is_declared_with_max_priority(version: str) -> None:
    data = load(version, "amqp-task-priority.json")
    (queue,) = [q for q in data["declarations"]["queues"] if q["name"] == "prioq"]
    assert queue["arguments"] == [["x-max-priority", "signedint", 10]]
    assert decode(raw_message(data["message"])).priority == 7


def test_rpc_results(version: str) -> None:
    data = load(version, "amqp-result-rpc.json")
    tasks = [decode(raw_message(m)) for m in data["task_messages"]]
    reply_to = {t.reply_to or "" for t in tasks}
    assert len(reply_to) == 1
    statuses = []
    for result in data["results"]:
        body = loads(result["body_text"].encode(), "application/json", "utf-8", ["json"])
        meta = meta_from_dict(body)
        if version == "5.7.0":
            assert json_dumps(meta_to_dict(meta)) == result["body_text"]
        else:  # Celery 5.3's rpc:// meta: task_id first and no date_done
            assert list(body)[:2] == ["task_id", "status"] and "date_done" not in body
            assert meta_to_dict(meta) == {**body, "date_done": None}
        properties = result["properties"]
        assert properties["correlation_id"] == meta.task_id and properties["headers"] == {}
        assert properties["delivery_mode"] == 1
        assert (result["exchange_name"], result["routing_keys"]) == ("", sorted(reply_to))
        statuses.append(meta.status)
        if meta.status == "FAILURE":
            assert type(exception_from_dict(meta.result)) is ValueError
    assert statuses == ["STARTED", "SUCCESS", "STARTED", "FAILURE"]


def test_control(version: str) -> None:
    data = load(version, "amqp-control.json")
    for request in data["requests"]:
        body = loads(request["body_text"].encode(), "application/json", "utf-8", ["json"])
        assert (request["exchange_name"], request["routing_keys"]) == ("celery.pidbox", [""])
        assert set(request["properties"]["headers"]) == {"clock", "expires"}
        assert (
            body["method"] in ("ping", "active")
            and body["reply_to"]["exchange"] == "reply.celery.pidbox"
        )
    for reply in data["replies"]:
        body = loads(reply["body_text"].encode(), "application/json", "utf-8", ["json"])
        assert reply["exchange_name"] == "reply.celery.pidbox"
        assert set(reply["properties"]["headers"]) == {"ticket", "clock"}
        assert list(body) == ["worker1@example-host"]
    (queue,) = data["reply_queues_during_a_call"]
    assert queue["exclusive"] is (version == "5.7.0")


def test_events(version: str) -> None:
    data = load(version, "amqp-events.json")
    for label, message in data["by_type"].items():
        body = loads(message["body_text"].encode(), "application/json", "utf-8", ["json"])
        events = body if isinstance(body, list) else [body]
        (routing_key,) = message["routing_keys"]
        assert message["exchange_name"] == "celeryev"
        assert (routing_key == "task.multi") == isinstance(body, list) == ("multi" in label)
        for event in events:
            if not isinstance(body, list):
                assert routing_key == event["type"].replace("-", ".") == label.replace("-", ".")
            assert message["properties"]["headers"] == {"hostname": event["hostname"]}


def test_declarations(version: str) -> None:
    data = load(version, "amqp-declarations.json")
    started = data["after_worker_start"]
    exchanges = {e["name"]: (e["type"], e["durable"]) for e in started["exchanges"]}
    assert exchanges["celery"] == ("direct", True)
    assert exchanges["celeryev"] == ("topic", True)
    assert exchanges["celery.pidbox"] == ("fanout", False)
    assert exchanges["reply.celery.pidbox"] == ("direct", False)
    queues = {q["name"]: q for q in started["queues"]}
    celery = queues["celery"]
    assert (celery["durable"], celery["exclusive"], celery["auto_delete"]) == (True, False, False)
    pidbox = queues["worker1@example-host.celery.pidbox"]
    assert pidbox["exclusive"] is (version == "5.7.0")
    assert "'' -> celery" in data["all_publishes_seen"]
