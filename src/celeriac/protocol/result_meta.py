"""Celery's result records (``celery-task-meta-<id>``) and exception (de)serialisation. Pure.

Meta dict keys, in Celery's order: ``status, result, traceback, children, date_done``, then
``group_id`` / ``parent_id`` only when set, then (with ``result_extended``) ``name, args,
kwargs, worker, retries, queue`` and any stamps, then ``task_id``. ``date_done`` is ISO-8601:
Celery 5.7 writes it with ``+00:00``, Celery 5.3 without an offset (naive UTC). ``ResultMeta``
keeps it as read, so a naive ``date_done`` means UTC (``date_done_utc`` applies that).

Exceptions are stored as ``{"exc_type": qualname, "exc_message": list(args), "exc_module":
module}``. Celeriac's own exceptions that have a Celery counterpart are written under Celery's
module and name (``celery.exceptions``, ``billiard.exceptions`` for the time limits and
``WorkerLostError``, ``kombu.exceptions`` for the kombu errors) so that a Celery client raises
its own class, and those names are read back as Celeriac's classes (``EXCEPTION_NAMES``).

Reading never imports a module: like Celery, the class is looked up in modules already imported
(``sys.modules``); an unknown class becomes ``RemoteError(exc_type, exc_module, *args)``, and a
name that resolves to something that is not an exception class raises ``SecurityError``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celeriac import exceptions as exc_mod
from celeriac.exceptions import DecodeError, EncodeError, RemoteError, SecurityError
from celeriac.protocol.serialization import dumps

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"

_CELERY = "celery.exceptions"
_BILLIARD = "billiard.exceptions"
_KOMBU = "kombu.exceptions"

#: Celeriac exception class -> (module, qualname) a Celery process knows it by
CELERY_NAMES: dict[type[BaseException], tuple[str, str]] = {
    exc_mod.CeleriacError: (_CELERY, "CeleryError"),
    exc_mod.ImproperlyConfigured: (_CELERY, "ImproperlyConfigured"),
    exc_mod.SecurityError: (_CELERY, "SecurityError"),
    exc_mod.TaskError: (_CELERY, "TaskError"),
    exc_mod.TaskPredicate: (_CELERY, "TaskPredicate"),
    exc_mod.Retry: (_CELERY, "Retry"),
    exc_mod.Ignore: (_CELERY, "Ignore"),
    exc_mod.Reject: (_CELERY, "Reject"),
    exc_mod.QueueNotFound: (_CELERY, "QueueNotFound"),
    exc_mod.IncompleteStream: (_CELERY, "IncompleteStream"),
    exc_mod.NotRegistered: (_CELERY, "NotRegistered"),
    exc_mod.TimeoutError: (_CELERY, "TimeoutError"),
    exc_mod.MaxRetriesExceededError: (_CELERY, "MaxRetriesExceededError"),
    exc_mod.TaskRevokedError: (_CELERY, "TaskRevokedError"),
    exc_mod.InvalidTaskError: (_CELERY, "InvalidTaskError"),
    exc_mod.ChordError: (_CELERY, "ChordError"),
    exc_mod.SoftTimeLimitExceeded: (_BILLIARD, "SoftTimeLimitExceeded"),
    exc_mod.TimeLimitExceeded: (_BILLIARD, "TimeLimitExceeded"),
    exc_mod.WorkerLostError: (_BILLIARD, "WorkerLostError"),
    exc_mod.OperationalError: (_KOMBU, "OperationalError"),
    exc_mod.EncodeError: (_KOMBU, "EncodeError"),
    exc_mod.DecodeError: (_KOMBU, "DecodeError"),
    exc_mod.ContentDisallowed: (_KOMBU, "ContentDisallowed"),
}

#: (module, qualname) written by Celery -> the Celeriac class it is read back as
EXCEPTION_NAMES: dict[tuple[str, str], type[BaseException]] = {
    **{name: cls for cls, name in CELERY_NAMES.items()},
    # celery.exceptions re-exports these from billiard / kombu
    (_CELERY, "SoftTimeLimitExceeded"): exc_mod.SoftTimeLimitExceeded,
    (_CELERY, "TimeLimitExceeded"): exc_mod.TimeLimitExceeded,
    (_CELERY, "WorkerLostError"): exc_mod.WorkerLostError,
    (_CELERY, "OperationalError"): exc_mod.OperationalError,
    (_CELERY, "RetryTaskError"): exc_mod.Retry,
}

_BASE_KEYS = frozenset(
    {"status", "result", "traceback", "children", "date_done", "group_id", "parent_id", "task_id"}
)


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """One task's state record."""

    task_id: str
    status: str
    result: Any = None  # the value, or for exception states the exception *dict*
    traceback: str | None = None
    children: list[Any] | None = field(default_factory=list)
    date_done: datetime | None = None
    group_id: str | None = None
    parent_id: str | None = None
    extended: dict[str, Any] | None = None  # name, args, kwargs, worker, retries, queue


# -- exceptions ------------------------------------------------------------------------------


def _serializable(value: Any, serializer: str) -> Any:
    try:
        dumps(value, serializer)
    except EncodeError:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"
    return value


def exception_to_dict(exc: BaseException, *, serializer: str = "json") -> dict[str, Any]:
    """``{"exc_type", "exc_message", "exc_module"}`` as Celery writes it.

    Arguments the ``serializer`` cannot encode are replaced by their ``repr`` (Celery's
    ``ensure_serializable``). A ``RemoteError`` is written as the exception it stands for.
    """
    cls = type(exc)
    if isinstance(exc, RemoteError):
        module, name = exc.exc_module, exc.exc_type
    elif cls in CELERY_NAMES:
        module, name = CELERY_NAMES[cls]
    else:
        module, name = cls.__module__, getattr(cls, "__qualname__", cls.__name__)
    return {
        "exc_type": name,
        "exc_message": [_serializable(arg, serializer) for arg in exc.args],
        "exc_module": module,
    }


def _lookup(module: str | None, qualname: str) -> Any:
    """The object ``module.qualname`` names, or None when it is not loaded / not there."""
    known = EXCEPTION_NAMES.get((module, qualname)) if module else None
    if known is not None:
        return known
    obj: Any = sys.modules.get(module) if module else None
    if obj is None:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def exception_from_dict(data: dict[str, Any]) -> BaseException:
    """Rebuild the exception: its own type when importable (and a BaseException subclass),
    else ``RemoteError`` carrying the type name, module and args. Never imports non-exceptions.

    The class is looked up in already imported modules (as Celery does, so that a stored
    record cannot make the reader import code); Celery's own exception names map to
    Celeriac's classes. ``SecurityError`` if the name resolves to a non-exception.
    """
    if not isinstance(data, dict):
        raise DecodeError(f"exception must be an object, not {type(data).__name__}", "result")
    name = data.get("exc_type")
    module = data.get("exc_module")
    if not isinstance(name, str) or not name:
        raise DecodeError(f"exception has no valid exc_type: {name!r}", field="exc_type")
    if module is not None and not isinstance(module, str):
        raise DecodeError(f"exc_module must be a string, not {module!r}", field="exc_module")
    message = data.get("exc_message", "")
    args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
    cls = _lookup(module, name)
    if cls is None:
        return RemoteError(name, module, *args)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        where = f"{module}.{name}" if module else name
        raise SecurityError(f"Expected an exception class, got {where} with payload {message!r}")
    try:
        return cls(*args)
    except Exception:
        return RemoteError(name, module, *args)


# -- meta records ----------------------------------------------------------------------------


def _format_date(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def meta_to_dict(meta: ResultMeta) -> dict[str, Any]:
    """The record as Celery stores it (key order as Celery's)."""
    data: dict[str, Any] = {
        "status": meta.status,
        "result": meta.result,
        "traceback": meta.traceback,
        "children": meta.children,
        "date_done": _format_date(meta.date_done),
    }
    if meta.group_id:
        data["group_id"] = meta.group_id
    if meta.parent_id:
        data["parent_id"] = meta.parent_id
    if meta.extended:
        data.update(meta.extended)
    data["task_id"] = meta.task_id
    return data


def date_done_utc(meta: ResultMeta) -> datetime | None:
    """``meta.date_done`` as an aware datetime (naive values, written by Celery 5.3, are UTC)."""
    value = meta.date_done
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _parse_date(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise DecodeError(f"date_done is not ISO-8601: {value!r}", "date_done") from exc
    else:
        raise DecodeError(f"date_done must be a string, not {type(value).__name__}", "date_done")
    return parsed


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise DecodeError(f"{key} must be a string, not {type(value).__name__}", field=key)


def meta_from_dict(data: dict[str, Any], *, task_id: str | None = None) -> ResultMeta:
    """Read a record written by Celery or Celeriac; ``DecodeError`` naming a bad field.

    ``task_id`` is used when the record carries none (very old Celery versions).
    """
    if not isinstance(data, dict):
        raise DecodeError(f"result meta must be an object, not {type(data).__name__}", "meta")
    status = data.get("status")
    if not isinstance(status, str) or not status:
        raise DecodeError(f"result meta has no valid status: {status!r}", field="status")
    tid = _optional_str(data, "task_id") or task_id
    if not tid:
        raise DecodeError("result meta has no task_id", field="task_id")
    children = data.get("children", [])
    if children is not None and not isinstance(children, list):
        raise DecodeError(f"children must be a list, not {children!r}", field="children")
    extended = {k: v for k, v in data.items() if k not in _BASE_KEYS}
    return ResultMeta(
        task_id=tid,
        status=status,
        result=data.get("result"),
        traceback=_optional_str(data, "traceback"),
        children=children,
        date_done=_parse_date(data.get("date_done")),
        group_id=_optional_str(data, "group_id"),
        parent_id=_optional_str(data, "parent_id"),
        extended=extended or None,
    )


def task_key(task_id: str) -> str:
    return f"{TASK_KEY_PREFIX}{task_id}"


def group_key(group_id: str) -> str:
    return f"{GROUP_KEY_PREFIX}{group_id}"
