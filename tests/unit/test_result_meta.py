"""Unit tests for ``celeriac.protocol.result_meta``: Celery's records and exception dicts."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

import pytest

from celeriac import exceptions as exc
from celeriac.exceptions import DecodeError, RemoteError, SecurityError
from celeriac.protocol.result_meta import (
    CELERY_NAMES,
    EXCEPTION_NAMES,
    ResultMeta,
    date_done_utc,
    exception_from_dict,
    exception_to_dict,
    group_key,
    meta_from_dict,
    meta_to_dict,
    task_key,
)

UTC = timezone.utc
DONE = datetime(2026, 11, 21, 22, 49, 47, 533469, tzinfo=UTC)


class Outer:
    class Inner(Exception):
        pass


class NeedsTwo(Exception):
    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(a, b)


# -- meta records ----------------------------------------------------------------------------


def test_meta_key_order_like_celery() -> None:
    meta = ResultMeta(
        task_id="t",
        status="SUCCESS",
        result=5,
        date_done=DONE,
        group_id="g",
        parent_id="p",
    )
    data = meta_to_dict(meta)
    assert list(data) == [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "group_id",
        "parent_id",
        "task_id",
    ]
    assert data["date_done"] == "2026-11-21T22:49:47.533469+00:00"
    assert meta_from_dict(data) == meta


def test_group_and_parent_only_when_set() -> None:
    data = meta_to_dict(ResultMeta(task_id="t", status="STARTED", result={"pid": 1}))
    assert list(data) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert data["date_done"] is None and data["children"] == []


def test_extended_fields_sit_before_task_id() -> None:
    extended = {"name": "app.add", "args": [1], "kwargs": {}, "worker": "w", "retries": 0}
    extended["queue"] = "celery"
    meta = ResultMeta(task_id="t", status="SUCCESS", extended=extended)
    data = meta_to_dict(meta)
    assert list(data)[-7:] == [*extended, "task_id"]
    assert meta_from_dict(data).extended == extended


def test_task_id_fallback_and_errors() -> None:
    assert meta_from_dict({"status": "PENDING"}, task_id="t").task_id == "t"
    assert meta_from_dict({"status": "SUCCESS", "task_id": "x"}, task_id="t").task_id == "x"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "meta"),
        ({"task_id": "t"}, "status"),
        ({"status": 1, "task_id": "t"}, "status"),
        ({"status": "SUCCESS"}, "task_id"),
        ({"status": "SUCCESS", "task_id": "t", "children": "x"}, "children"),
        ({"status": "SUCCESS", "task_id": "t", "date_done": "today"}, "date_done"),
        ({"status": "SUCCESS", "task_id": "t", "date_done": 5}, "date_done"),
        ({"status": "SUCCESS", "task_id": "t", "traceback": 5}, "traceback"),
        ({"status": "SUCCESS", "task_id": "t", "parent_id": 5}, "parent_id"),
    ],
)
def test_bad_meta_names_the_field(data: Any, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        meta_from_dict(data)
    assert info.value.field == field


def test_date_done_utc_reads_naive_as_utc() -> None:
    naive = meta_from_dict(
        {"status": "SUCCESS", "task_id": "t", "date_done": "2026-01-01T00:00:00"}
    )
    assert naive.date_done is not None and naive.date_done.tzinfo is None
    assert date_done_utc(naive) == datetime(2026, 1, 1, tzinfo=UTC)
    zulu = meta_from_dict(
        {"status": "SUCCESS", "task_id": "t", "date_done": "2026-01-01T00:00:00Z"}
    )
    assert date_done_utc(zulu) == datetime(2026, 1, 1, tzinfo=UTC)


def test_keys() -> None:
    assert task_key("x") == "celery-task-meta-x"
    assert group_key("g") == "celery-taskset-meta-g"


# -- exceptions out --------------------------------------------------------------------------


def test_builtin_exception_dict() -> None:
    assert exception_to_dict(ValueError("boom", 42)) == {
        "exc_type": "ValueError",
        "exc_message": ["boom", 42],
        "exc_module": "builtins",
    }


def test_nested_class_uses_qualname() -> None:
    data = exception_to_dict(Outer.Inner("x"))
    assert data == {"exc_type": "Outer.Inner", "exc_message": ["x"], "exc_module": __name__}
    rebuilt = exception_from_dict(data)
    assert type(rebuilt) is Outer.Inner and rebuilt.args == ("x",)


def test_unserializable_args_become_reprs() -> None:
    data = exception_to_dict(ValueError(object, {1, 2}, "ok"))
    assert data["exc_message"] == [repr(object), "{1, 2}", "ok"]


CELERY_MAPPING = [
    (exc.TaskRevokedError, "celery.exceptions", "TaskRevokedError"),
    (exc.NotRegistered, "celery.exceptions", "NotRegistered"),
    (exc.Retry, "celery.exceptions", "Retry"),
    (exc.MaxRetriesExceededError, "celery.exceptions", "MaxRetriesExceededError"),
    (exc.ChordError, "celery.exceptions", "ChordError"),
    (exc.Ignore, "celery.exceptions", "Ignore"),
    (exc.Reject, "celery.exceptions", "Reject"),
    (exc.InvalidTaskError, "celery.exceptions", "InvalidTaskError"),
    (exc.TimeoutError, "celery.exceptions", "TimeoutError"),
    (exc.CeleriacError, "celery.exceptions", "CeleryError"),
    (exc.TimeLimitExceeded, "billiard.exceptions", "TimeLimitExceeded"),
    (exc.SoftTimeLimitExceeded, "billiard.exceptions", "SoftTimeLimitExceeded"),
    (exc.WorkerLostError, "billiard.exceptions", "WorkerLostError"),
    (exc.OperationalError, "kombu.exceptions", "OperationalError"),
]


@pytest.mark.parametrize(("cls", "module", "name"), CELERY_MAPPING)
def test_our_exceptions_are_written_under_celerys_names(
    cls: type[BaseException], module: str, name: str
) -> None:
    instance = cls("why")
    data = exception_to_dict(instance)
    assert (data["exc_module"], data["exc_type"]) == (module, name)
    rebuilt = exception_from_dict(data)
    assert type(rebuilt) is cls and rebuilt.args == instance.args


def test_every_mapped_class_round_trips() -> None:
    for cls, (module, name) in CELERY_NAMES.items():
        assert EXCEPTION_NAMES[(module, name)] is cls


def test_subclasses_keep_their_own_name() -> None:
    class MyRevoked(exc.TaskRevokedError):
        pass

    assert exception_to_dict(MyRevoked("x"))["exc_module"] == __name__


@pytest.mark.parametrize(
    ("module", "name", "cls"),
    [
        ("celery.exceptions", "TimeLimitExceeded", exc.TimeLimitExceeded),
        ("celery.exceptions", "SoftTimeLimitExceeded", exc.SoftTimeLimitExceeded),
        ("celery.exceptions", "WorkerLostError", exc.WorkerLostError),
        ("celery.exceptions", "OperationalError", exc.OperationalError),
        ("kombu.exceptions", "ContentDisallowed", exc.ContentDisallowed),
        ("kombu.exceptions", "DecodeError", exc.DecodeError),
    ],
)
def test_celery_reexports_are_read_too(module: str, name: str, cls: type[BaseException]) -> None:
    rebuilt = exception_from_dict({"exc_type": name, "exc_message": ["m"], "exc_module": module})
    assert type(rebuilt) is cls


def test_remote_error_is_written_as_the_original() -> None:
    remote = RemoteError("WireError", "wireapp", "custom failure")
    assert exception_to_dict(remote) == {
        "exc_type": "WireError",
        "exc_message": ["custom failure"],
        "exc_module": "wireapp",
    }


# -- exceptions in ---------------------------------------------------------------------------


def test_unknown_module_gives_remote_error() -> None:
    rebuilt = exception_from_dict(
        {"exc_type": "Boom", "exc_message": ["a", 1], "exc_module": "no.such.module"}
    )
    assert isinstance(rebuilt, RemoteError)
    assert (rebuilt.exc_type, rebuilt.exc_module, rebuilt.args) == (
        "Boom",
        "no.such.module",
        ("a", 1),
    )
    assert str(rebuilt) == "no.such.module.Boom: a, 1"


def test_modules_are_never_imported() -> None:
    module = "tabnanny"  # a stdlib module nothing here imports
    assert module not in sys.modules
    rebuilt = exception_from_dict({"exc_type": "NannyNag", "exc_message": [], "exc_module": module})
    assert isinstance(rebuilt, RemoteError) and module not in sys.modules


def test_missing_attribute_gives_remote_error() -> None:
    rebuilt = exception_from_dict({"exc_type": "Nope", "exc_message": [], "exc_module": "builtins"})
    assert isinstance(rebuilt, RemoteError)


@pytest.mark.parametrize(
    ("module", "name"), [("os", "system"), ("builtins", "print"), ("builtins", "object")]
)
def test_non_exceptions_are_a_security_error(module: str, name: str) -> None:
    with pytest.raises(SecurityError, match=f"{module}.{name}"):
        exception_from_dict({"exc_type": name, "exc_message": ["rm -rf /"], "exc_module": module})


def test_construction_failure_gives_remote_error() -> None:
    rebuilt = exception_from_dict(
        {"exc_type": "NeedsTwo", "exc_message": ["a"], "exc_module": __name__}
    )
    assert isinstance(rebuilt, RemoteError) and rebuilt.args == ("a",)
    ok = exception_from_dict(
        {"exc_type": "NeedsTwo", "exc_message": ["a", "b"], "exc_module": __name__}
    )
    assert type(ok) is NeedsTwo


def test_string_message_and_missing_module() -> None:
    rebuilt = exception_from_dict(
        {"exc_type": "KeyError", "exc_message": "k", "exc_module": "builtins"}
    )
    assert type(rebuilt) is KeyError and rebuilt.args == ("k",)
    anonymous = exception_from_dict({"exc_type": "Mystery", "exc_message": []})
    assert isinstance(anonymous, RemoteError) and anonymous.exc_module is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("ValueError", "result"),
        ({"exc_message": []}, "exc_type"),
        ({"exc_type": 1}, "exc_type"),
        ({"exc_type": "E", "exc_module": 1}, "exc_module"),
    ],
)
def test_bad_exception_dicts(data: Any, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        exception_from_dict(data)
    assert info.value.field == field
