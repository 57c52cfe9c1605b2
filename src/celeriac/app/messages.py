"""Turning ``apply_async`` options into a ``TaskMessage`` and its queue: the one place it happens.

``prepare`` resolves, in Celery's order: the task id; ``countdown``/``eta`` into an aware ``eta``;
``expires`` (seconds or datetime); the queue (``queue=`` > ``task_routes`` > the task's queue >
``task_default_queue``; a bare ``routing_key`` names the queue, as with the default exchange);
priority; serializer and compression; ``link``/``link_error`` into signature dicts; time limits;
extra headers; and the parent/root ids of the task that is sending (if any).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celeriac._internal.ids import client_oid, new_id, origin
from celeriac._internal.timeutils import UTC, utcnow
from celeriac.app import context as ctx
from celeriac.app.routing import check_queue, lookup_route, queue_name
from celeriac.protocol.message import TaskMessage

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task

#: options ``prepare`` understands (anything else is an error naming it)
KNOWN_OPTIONS = frozenset(
    {
        "task_id",
        "countdown",
        "eta",
        "expires",
        "queue",
        "routing_key",
        "exchange",
        "exchange_type",
        "priority",
        "headers",
        "link",
        "link_error",
        "ignore_result",
        "serializer",
        "compression",
        "shadow",
        "retry",
        "retry_policy",
        "time_limit",
        "soft_time_limit",
        "add_to_parent",
        "group_id",
        "group_index",
        "chord",
        "chain",
        "retries",
        "root_id",
        "parent_id",
        "reply_to",
        "replaced_task_nesting",
        "producer",
        "connection",
        "router",
        "result_cls",
        "publisher",
        "declare",
        "mandatory",
        "immediate",
        "delivery_mode",
        "task_type",
        "route_name",
        "stamped_headers",
        "stamps",
        "subtask_type",
        "throw",
    }
)

_OID = threading.local()


def _reply_to() -> str:
    value: str | None = getattr(_OID, "value", None)
    if value is None:
        value = client_oid()
        _OID.value = value
    return value


@dataclass(frozen=True, slots=True)
class Publication:
    """A message ready to publish: its queue, the message, and when it becomes due."""

    queue: str
    message: TaskMessage
    eta: float | None  # Unix time when delayed, None when due now


def _aware(dt: datetime) -> datetime:
    """Naive datetimes are UTC, as Celery 5 reads them (``naive_as_utc``)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _eta(options: dict[str, Any], now: datetime) -> datetime | None:
    countdown = options.get("countdown")
    if countdown is not None:
        if isinstance(countdown, timedelta):
            return now + countdown
        return now + timedelta(seconds=float(countdown))
    eta = options.get("eta")
    if eta is None:
        return None
    if isinstance(eta, str):
        from celeriac._internal.timeutils import parse_iso

        eta = parse_iso(eta)
    return _aware(eta)


def _expires(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, timedelta):
        return now + value
    if isinstance(value, str):
        from celeriac._internal.timeutils import parse_iso

        return _aware(parse_iso(value))
    return now + timedelta(seconds=float(value))


def _sig_dicts(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(item) for item in items] if items else None


def _queue(
    conf: dict[str, Any],
    name: str,
    task: Task[Any, Any] | None,
    args: Any,
    kwargs: Any,
    options: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    route: dict[str, Any] = {}
    if options.get("queue") is None and options.get("routing_key") is None:
        route = lookup_route(conf["task_routes"], name, args, kwargs, options, task)
    queue = (
        options.get("queue")
        or options.get("routing_key")
        or route.get("queue")
        or (task.queue if task is not None else None)
        or conf["task_default_queue"]
    )
    queue = queue_name(queue)
    check_queue(queue, conf["task_queues"], conf["task_create_missing_queues"])
    return queue, route


def _priority(
    conf: dict[str, Any],
    task: Task[Any, Any] | None,
    options: dict[str, Any],
    route: dict[str, Any],
    parent: ctx.Context | None,
) -> int:
    for value in (
        options.get("priority"),
        route.get("priority"),
        task.priority if task is not None else None,
        parent.priority if parent is not None and conf["task_inherit_parent_priority"] else None,
        conf["task_default_priority"],
    ):
        if value is not None:
            return int(value)
    return 0


def check_options(name: str, options: dict[str, Any]) -> None:
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        import difflib

        bad = sorted(unknown)[0]
        close = difflib.get_close_matches(bad, sorted(KNOWN_OPTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"apply_async() of {name!r} got an unknown option {bad!r}{hint}")


def _check_call(name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> None:
    if options:
        check_options(name, options)
    if args is not None and not isinstance(args, (list, tuple)):
        raise TypeError(f"{name}: args must be a list or tuple, not {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"{name}: kwargs must be a dict, not {type(kwargs).__name__}")


def _times(
    options: dict[str, Any], expires: Any
) -> tuple[datetime | None, datetime | None, float | None]:
    """(eta, expires, due Unix time or None); the clock is read only when a time is given."""
    if expires is None and options.get("countdown") is None and options.get("eta") is None:
        return None, None, None
    now = utcnow()
    eta = _eta(options, now)
    due = eta.timestamp() if eta is not None and eta > now else None
    return eta, _expires(expires, now), due


def _parent() -> ctx.Context | None:
    current = ctx.top()
    return current[1] if current is not None and not current[1].called_directly else None


def prepare(
    app: Celeriac,
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    task: Task[Any, Any] | None = None,
    **options: Any,
) -> Publication:
    """The ``Publication`` for calling task ``name`` with ``args``/``kwargs`` and options."""
    _check_call(name, args, kwargs, options)
    conf = app.conf.resolved()
    parent = _parent()
    queue, route = _queue(conf, name, task, args, kwargs, options)
    task_id = options.get("task_id") or new_id()
    default_expires = task.expires if task is not None else None
    eta, expires, due = _times(options, options.get("expires", default_expires))
    parent_id = options.get("parent_id") or (parent.id if parent is not None else None)
    root_id = options.get("root_id") or (parent.root_id if parent is not None else None)
    ignore_result = options.get("ignore_result")
    if ignore_result is None:
        ignore_result = bool(task.ignore_result) if task is not None else False
    message = TaskMessage(
        id=task_id,
        task=name,
        args=tuple(args or ()),
        kwargs=dict(kwargs or {}),
        callbacks=_sig_dicts(options.get("link")),
        errbacks=_sig_dicts(options.get("link_error")),
        chain=options.get("chain"),
        chord=options.get("chord"),
        shadow=options.get("shadow") or (task.shadow_name if task is not None else None),
        eta=eta,
        expires=expires,
        group=options.get("group_id"),
        group_index=options.get("group_index"),
        retries=int(options.get("retries") or 0),
        timelimit=(options.get("time_limit"), options.get("soft_time_limit")),
        root_id=root_id or task_id,
        parent_id=parent_id,
        origin=origin(),
        ignore_result=bool(ignore_result),
        replaced_task_nesting=int(options.get("replaced_task_nesting") or 0),
        extra_headers=dict(options.get("headers") or {}),
        reply_to=options.get("reply_to") or _reply_to(),
        priority=_priority(conf, task, options, route, parent),
        serializer=options.get("serializer")
        or (task.serializer if task is not None and task.serializer else None)
        or conf["task_serializer"],
        compression=options.get("compression")
        or (task.compression if task is not None else None)
        or conf["task_compression"],
    )
    return Publication(queue, message, due)


def from_signature(
    app: Celeriac,
    sig: dict[str, Any],
    *,
    args_prefix: Sequence[Any] = (),
    parent: TaskMessage | None = None,
    chain: list[dict[str, Any]] | None = None,
) -> Publication:
    """The message for a link callback or the next chain step built from a signature dict."""
    options = dict(sig.get("options") or {})
    args = list(sig.get("args") or ())
    if not sig.get("immutable"):
        args = [*args_prefix, *args]
    options.pop("subtask_type", None)
    for key in ("chord_size", "task_type"):
        options.pop(key, None)
    if chain is not None:
        options["chain"] = chain
    if parent is not None:
        options.setdefault("priority", parent.priority)  # as Celery's trace passes it on
        options.setdefault("parent_id", parent.id)
        options.setdefault("root_id", parent.root_id or parent.id)
    name = str(sig["task"])
    task = app.tasks.get(name) if name in app.tasks else None
    return prepare(app, name, args, dict(sig.get("kwargs") or {}), task=task, **options)
