"""Celery's result records (``celery-task-meta-<id>``) and exception (de)serialisation. Pure.

Meta dict keys, in Celery's order: ``status, result, traceback, children, date_done``, then
``group_id`` / ``parent_id`` only when set, then ``task_id`` (and with ``result_extended``:
``name, args, kwargs, worker, retries, queue``). Exceptions are stored as
``{"exc_type": qualname, "exc_message": list(args), "exc_module": module}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"


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


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """``{"exc_type", "exc_message", "exc_module"}`` as Celery writes it."""
    raise NotImplementedError


def exception_from_dict(data: dict[str, Any]) -> BaseException:
    """Rebuild the exception: its own type when importable (and a BaseException subclass),
    else ``RemoteError`` carrying the type name, module and args. Never imports non-exceptions.
    """
    raise NotImplementedError


def meta_to_dict(meta: ResultMeta) -> dict[str, Any]:
    """The record as Celery stores it (key order as Celery's)."""
    raise NotImplementedError


def meta_from_dict(data: dict[str, Any]) -> ResultMeta:
    """Read a record written by Celery or Celeriac; ``DecodeError`` naming a bad field."""
    raise NotImplementedError


def task_key(task_id: str) -> str:
    return f"{TASK_KEY_PREFIX}{task_id}"


def group_key(group_id: str) -> str:
    return f"{GROUP_KEY_PREFIX}{group_id}"
