"""Golden tests: result records in the Redis backend, against real Celery captures (5.7, 5.3).

Every captured meta JSON goes through ``meta_from_dict`` and back through ``meta_to_dict`` to the
same dict, key order included, and serialises to the captured bytes. Exception dicts rebuild the
right exception type, and Celeriac writes the same dicts for the same exceptions.
"""

from __future__ import annotations

import sys
import types
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from golden_support import VERSIONS, load, sig

from celeriac.exceptions import RemoteError, TaskRevokedError
from celeriac.protocol.envelope import dumps_envelope, loads_envelope
from celeriac.protocol.message import TaskMessage, decode, encode
from celeriac.protocol.result_meta import (
    ResultMeta,
    date_done_utc,
    exception_from_dict,
    exception_to_dict,
    meta_from_dict,
    meta_to_dict,
    task_key,
)
from celeriac.protocol.serialization import json_dumps, json_loads, loads

UTC = timezone.utc


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def round_trip(raw: str) -> ResultMeta:
    """Decode ``raw`` like a client does; check it re-encodes to the same dict and bytes."""
    data = loads(raw.encode(), "application/json", "utf-8", accept=["json"])
    meta = meta_from_dict(json_loads(raw))
    again = meta_to_dict(meta)
    assert list(again.items()) == list(json_loads(raw).items())
    assert json_dumps(again) == raw
    assert meta.task_id == data["task_id"] and meta.status == data["status"]
    return meta


def stored(version: str, name: str) -> tuple[dict[str, Any], ResultMeta]:
    data = load(version, name)
    assert data["redis_key"] == task_key(data["decoded"]["task_id"])
    return data, round_trip(data["raw"])


def test_success(version: str) -> None:
    data, meta = stored(version, "result-success.json")
    assert (meta.status, meta.result, meta.children, meta.traceback) == ("SUCCESS", 5, [], None)
    done = date_done_utc(meta)
    assert done is not None and done.tzinfo is not None
    writes = [round_trip(w["raw"]) for w in data["all_state_writes"]]
    assert [m.status for m in writes] == ["STARTED", "SUCCESS"]
    assert all(
        w["command"][0] == "SETEX" and w["command"][2] == "86400" for w in data["all_state_writes"]
    )


@pytest.mark.parametrize("name", ["result-started.json", "result-started-acks-late.json"])
def test_started(version: str, name: str) -> None:
    _, meta = stored(version, name)
    assert meta.status == "STARTED" and meta.date_done is None
    assert set(meta.result) == {"pid", "hostname"}


def test_failure(version: str) -> None:
    data, meta = stored(version, "result-failure.json")
    assert meta.status == "FAILURE" and meta.traceback and meta.date_done is not None
    exc = exception_from_dict(meta.result)
    assert type(exc) is ValueError and exc.args == ("boom", 42)
    assert exception_to_dict(ValueError("boom", 42)) == meta.result
    assert [round_trip(w["raw"]).status for w in data["all_state_writes"]] == ["STARTED", "FAILURE"]


def test_failure_custom(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, meta = stored(version, "result-failure-custom.json")
    assert meta.result == {
        "exc_type": "WireError",
        "exc_message": ["custom failure"],
        "exc_module": "wireapp",
    }
    monkeypatch.delitem(sys.modules, "wireapp", raising=False)
    remote = exception_from_dict(meta.result)  # the module is not loaded here
    assert isinstance(remote, RemoteError)
    assert (remote.exc_type, remote.exc_module, remote.args) == (
        "WireError",
        "wireapp",
        ("custom failure",),
    )
    assert exception_to_dict(remote) == meta.result

    module = types.ModuleType("wireapp")
    error = type("WireError", (Exception,), {"__module__": "wireapp"})
    module.WireError = error  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wireapp", module)
    exc = exception_from_dict(meta.result)
    assert type(exc) is error and exc.args == ("custom failure",)
    assert exception_to_dict(exc) == meta.result


def test_retry(version: str) -> None:
    data, meta = stored(version, "result-retry.json")
    assert meta.status == "RETRY" and meta.date_done is None and meta.traceback
    assert meta.children == [[[meta.task_id, None], None]]
    exc = exception_from_dict(meta.result)
    assert type(exc) is KeyError and exc.args == ("transient",)
    assert exception_to_dict(KeyError("transient")) == meta.result
    assert data["command"][0] == "SETEX"
    statuses = [round_trip(w["raw"]).status for w in data["all_state_writes"]]
    assert statuses[:2] == ["STARTED", "RETRY"] and statuses[-1] == "SUCCESS"


@pytest.mark.parametrize(
    ("name", "why"),
    [("result-revoked.json", "revoked"), ("result-revoked-expired.json", "expired")],
)
def test_revoked(version: str, name: str, why: str) -> None:
    _, meta = stored(version, name)
    assert meta.status == "REVOKED" and meta.traceback is None
    expected = {
        "exc_type": "TaskRevokedError",
        "exc_message": [why],
        "exc_module": "celery.exceptions",
    }
    assert meta.result == expected
    exc = exception_from_dict(meta.result)
    assert type(exc) is TaskRevokedError and exc.args == (why,)
    assert exception_to_dict(TaskRevokedError(why)) == expected
    assert meta.children == []  # the spec (5.2) says null; both captures hold []


def test_success_types(version: str) -> None:
    _, meta = stored(version, "result-success-types.json")
    kwargs = meta.result["kwargs"]
    assert kwargs["dt"] == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert kwargs["b"] == b"bytes"
    assert kwargs["dec"] == Decimal("1.10")
    assert kwargs["u"] == uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_chain_parent(version: str) -> None:
    _, meta = stored(version, "result-chain-parent.json")
    assert meta.parent_id is not None and meta.group_id is None
    assert meta.children is not None and len(meta.children) == 1
    ((child_id, parent), none) = meta.children[0]
    assert isinstance(child_id, str) and parent is None and none is None


def test_group(version: str) -> None:
    data = load(version, "result-group.json")
    saved = json_loads(data["raw"])
    (group_id, no_parent), members = saved["result"]
    assert data["redis_key"] == f"celery-taskset-meta-{group_id}" and no_parent is None
    assert json_dumps(saved) == data["raw"]
    metas = [round_trip(m["raw"]) for m in data["member_results"]]
    assert [m.group_id for m in metas] == [group_id] * 3
    assert [[[m.task_id, None], None] for m in metas] == members


def test_chord_join(version: str) -> None:
    data = load(version, "result-chord-join.json")
    group_id = data["group_id"]
    for key, value in data["keys_while_header_running"].items():
        assert key.startswith(f"celery-taskset-meta-{group_id}.")
        if key.endswith(".j"):
            for member, score in value["value"]:
                one, task_id, state, result = json_loads(member)
                assert (one, state, score) == (1, "SUCCESS", 0.0)
                assert isinstance(task_id, str) and result == 2
    callback = data["callback_message"]
    envelope = loads_envelope(callback["raw"])
    message = decode(envelope.message, accept=["json"])
    assert (message.task, message.args) == ("wireapp.tsum", ([2, 4],))
    assert message.group == (group_id if version == "5.7.0" else None)
    ids = {
        k: getattr(message, k)
        for k in ("id", "root_id", "parent_id", "group", "origin", "reply_to")
    }
    rebuilt = encode(TaskMessage(task="wireapp.tsum", args=([2, 4],), **ids))
    data_out = dumps_envelope(rebuilt, routing_key="celery", delivery_tag=envelope.delivery_tag)
    assert data_out == callback["raw"].encode()
    meta = round_trip(data["callback_result"]["raw"])
    assert (meta.status, meta.result, meta.parent_id) == ("SUCCESS", 6, message.parent_id)
    assert meta.group_id == message.group


def test_link_results(version: str) -> None:
    data = load(version, "redis-task-link-executed.json")
    parent = round_trip(data["parent_result"]["raw"])
    failed = round_trip(data["failed_result"]["raw"])
    assert (
        parent.children
        and parent.children[0][0][0] == data["messages"][1]["decoded"]["headers"]["id"]
    )
    assert type(exception_from_dict(failed.result)) is ValueError
    chain = load(version, "redis-task-chain-steps.json")
    assert round_trip(chain["final_result"]["raw"]).result == 12


def test_naive_date_done_is_kept_as_written() -> None:
    """Celery 5.3 writes ``date_done`` without an offset (UTC): read and re-written as is."""
    data = {
        "status": "SUCCESS",
        "result": 6,
        "traceback": None,
        "children": [],
        "date_done": "2026-11-21T22:59:54.238396",
        "task_id": "t",
    }
    meta = meta_from_dict(data)
    assert meta_to_dict(meta) == data
    assert date_done_utc(meta) == datetime(2026, 11, 21, 22, 59, 54, 238396, tzinfo=UTC)
    aware = ResultMeta("t", "SUCCESS", date_done=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(0))
    assert meta_to_dict(aware)["date_done"] == "2026-01-01T00:00:00+00:00"


def test_signature_helper_matches_capture(version: str) -> None:
    link = load(version, "redis-task-link.json")["decoded"]["body_decoded"][2]
    assert link["callbacks"] == [json_loads(json_dumps(sig("wireapp.add", 10)))]
