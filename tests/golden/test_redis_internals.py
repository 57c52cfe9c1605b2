"""Golden tests: kombu's Redis bookkeeping (unacked hash, restore, keys), Celery 5.7 and 5.3.

Checks the envelope helpers a Redis transport builds on: ``unacked`` hash values
(``[envelope, exchange, routing_key]``) parse and rebuild byte for byte, ``mark_redelivered``
turns the stored envelope into exactly what kombu pushes back on restore, and every envelope or
meta left in Redis decodes. The command sequences are checked against the spec's description
(section 3.4/3.5) so a transport author can rely on them.
"""

from __future__ import annotations

from typing import Any

import pytest
from golden_support import TRUNCATED, VERSIONS, load, open_envelope

from celeriac.protocol.envelope import (
    dumps_unacked,
    loads_envelope,
    loads_unacked,
    mark_redelivered,
)
from celeriac.protocol.message import decode
from celeriac.protocol.result_meta import meta_from_dict, meta_to_dict
from celeriac.protocol.serialization import json_dumps, json_loads

SEP = "\x06\x16"


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def unacked_entries(keys: dict[str, Any]) -> list[tuple[str, bytes, float]]:
    """(delivery tag, envelope JSON, delivery time) of every unacked message, checked."""
    hash_value = keys["unacked"]["value"]
    index = dict(keys["unacked_index"]["value"])
    assert set(hash_value) == set(index)
    found = []
    for tag, value in hash_value.items():
        envelope, exchange, routing_key = loads_unacked(value)
        assert (exchange, routing_key) == ("", "celery")
        assert dumps_unacked(envelope, exchange, routing_key) == value.encode()
        assert loads_envelope(envelope).delivery_tag == tag
        assert isinstance(index[tag], float)
        found.append((tag, envelope, index[tag]))
    return found


def test_unacked_while_an_acks_late_task_runs(version: str) -> None:
    data = load(version, "redis-unacked.json")
    ((_, envelope, _),) = unacked_entries(data["keys_while_task_runs"])
    message = decode(loads_envelope(envelope).message)
    assert (message.task, message.args) == ("wireapp.slow_late", (4,))
    meta = meta_from_dict(json_loads(data["started_result"]["raw"]))
    assert meta.task_id == message.id and meta.status == "STARTED"


def is_mutex_lock(command: list[str]) -> bool:
    """``SET unacked_mutex <token> NX PX 300000`` (option order differs between versions)."""
    return command[:2] == ["SET", "unacked_mutex"] and sorted(command[3:]) == [
        "300000",
        "NX",
        "PX",
    ]


def check_restore(unacked: dict[str, Any], restored: dict[str, Any]) -> None:
    ((tag, envelope, _),) = unacked_entries(unacked)
    assert restored["redis_command"] == "RPUSH" and restored["redis_key"] == "celery"
    assert mark_redelivered(envelope) == restored["raw"].encode()
    parsed, _ = open_envelope(restored["raw"])
    assert parsed.redelivered and parsed.delivery_tag == tag
    assert parsed.message.headers["redelivered"] is True
    message = decode(parsed.message)
    assert "redelivered" not in message.extra_headers
    assert message == decode(loads_envelope(envelope).message)


def test_restore_at_shutdown(version: str) -> None:
    data = load(version, "redis-restore-at-shutdown.json")
    check_restore(data["unacked_before_shutdown"], data["restored_message"])
    assert data["queue_after"] == [data["restored_message"]["raw"]]
    assert decode(loads_envelope(data["queue_after"][0]).message).eta is not None


def test_visibility_timeout_restore(version: str) -> None:
    data = load(version, "redis-visibility-restore.json")
    check_restore(data["unacked_left_by_killed_worker"], data["restored_message"])
    commands = [c["cmd"] for c in data["restore_commands"]]
    assert is_mutex_lock(commands[0])
    sweep = commands[1]
    expected = ["ZRANGE", "unacked_index"] if version == "5.7.0" else ["ZREVRANGEBYSCORE"]
    assert sweep[: len(expected)] == expected and sweep[-1] == "WITHSCORES"
    names = [c[0] for c in commands[2:9]]
    assert names == ["WATCH", "HGET", "MULTI", "ZREM", "HDEL", "RPUSH", "EXEC"]
    meta = meta_from_dict(json_loads(data["final_result"]["raw"]))
    assert json_dumps(meta_to_dict(meta)) == data["final_result"]["raw"]


def test_keys_and_channels(version: str) -> None:
    data = load(version, "redis-keys-and-channels.json")
    keys = data["keys_at_end"]
    for raw in keys["celery"]["value"]:
        envelope, _ = open_envelope(raw)
        assert envelope.redelivered and decode(envelope.message).task == "wireapp.add"
    for name, key in keys.items():
        if name.startswith("_kombu.binding.") and key["type"] == "set":
            for member in key["value"]:
                _routing_key, pattern, queue = member.split(SEP)
                assert queue and pattern == ""
        if (
            name.startswith("celery-taskset-meta-")
            and key["type"] == "string"
            and "." not in name[20:]
        ):
            saved = json_loads(key["value"])
            assert json_dumps(saved) == key["value"] and saved["result"][0][0] == name[20:]
    assert "PSUBSCRIBE /0.celery.pidbox" in data["subscribe_commands"]
    assert "PSUBSCRIBE /0.celeryev/worker.*" in data["subscribe_commands"]
    for command in data["brpop_commands"]:
        parts = command.split(" ")
        assert parts[0] == "BRPOP" and parts[-1] == "1"
        queue = parts[1]
        assert parts[1:5] == [queue, f"{queue}{SEP}3", f"{queue}{SEP}6", f"{queue}{SEP}9"]
    assert (version == "5.7.0") == ("_kombu.binding_deadlines" in keys)


def test_worker_startup_commands(version: str) -> None:
    data = load(version, "redis-worker-startup-commands.json")
    commands = [c["cmd"] for c in data["commands"] if c["client"] == "client"]
    commands = [c for c in commands if c[0] != "HELLO"]
    assert is_mutex_lock(commands[0])  # the restore sweep comes first
    published = {c[1] for c in commands if c[0] == "PUBLISH"}
    assert {"/0.celery.pidbox", "/0.celeryev/worker.online", "/0.celeryev/task.multi"} <= published
    # long arguments were shortened by the capture: every value still opens like an envelope
    # (events, control, tasks) or a result meta (SETEX / PUBLISH on celery-task-meta-*)
    for command in commands:
        if command[0] in ("PUBLISH", "LPUSH", "SETEX") and TRUNCATED in command[-1]:
            is_meta = command[1].startswith("celery-task-meta-")
            assert command[-1].startswith('{"status": ' if is_meta else '{"body": "')
