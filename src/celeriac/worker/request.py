"""Reading a ``Delivery`` into a runnable ``Request``, or an ``Invalid`` saying why it cannot run.

Checks, in order (the first that fails wins):

1. size: a body larger than ``worker_max_message_size`` bytes is not decoded;
2. decoding (``protocol.message.decode`` with ``accept_content``): malformed message, bad field,
   content type not accepted (pickle is refused unless accepted);
3. poison guard: a message delivered more than ``broker_max_deliveries`` times (its earlier
   deliveries never finished: it may be killing workers) is given up, with a ``WorkerLostError``
   FAILURE;
4. task lookup: an unknown task name gives a ``NotRegistered`` FAILURE;
5. arguments: ``task.check_arguments`` (a call that does not fit the function's signature gives
   the ``TypeError`` as FAILURE, as running it would).

``Invalid`` messages are dead-lettered by the worker with ``reason`` (one line). A ``Request``
still has its deadlines checked by the consumer: ``expires`` in the past (REVOKED, not run) and
``eta`` in the future (deferred to the broker).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celeriac._internal.timeutils import make_aware
from celeriac.app.context import Context, from_message
from celeriac.exceptions import (
    ContentDisallowed,
    DecodeError,
    NotRegistered,
    WorkerLostError,
)

if TYPE_CHECKING:
    from celeriac.app.task import Task
    from celeriac.protocol.envelope import RawMessage
    from celeriac.protocol.message import TaskMessage
    from celeriac.transports.base import Delivery

Decoder = Callable[["RawMessage", "Iterable[str] | None"], "TaskMessage"]


@dataclass(eq=False)
class Request:
    """A decoded, valid task message this worker holds, with its task and request context."""

    delivery: Delivery
    message: TaskMessage
    task: Task[Any, Any]
    context: Context
    received: float = field(default_factory=time.monotonic)
    started: float | None = None
    #: acknowledged before running (``acks_late=False``)
    acked: bool = False
    #: given up at cold shutdown: its outcome is discarded, its message was requeued
    abandoned: bool = False
    #: taken back from the pool's queue before it started (warm shutdown): requeued, not run
    withdrawn: bool = False

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def name(self) -> str:
        """The name shown in logs: the ``shadow`` name when the sender gave one."""
        return self.message.shadow or self.message.task

    @property
    def tag(self) -> str:
        return self.delivery.tag

    @property
    def queue(self) -> str:
        return self.delivery.queue

    @property
    def args(self) -> tuple[Any, ...]:
        return self.message.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.message.kwargs

    @property
    def hostname(self) -> str | None:
        return self.context.hostname

    # the task's options, read once per request (each is a settings lookup when the task does
    # not set it): ``acks_late``, ``ignore_result``, ``store_errors``, ``track_started``
    @functools.cached_property
    def acks_late(self) -> bool:
        return bool(self.task.acks_late)

    @functools.cached_property
    def ignore_result(self) -> bool:
        return bool(self.message.ignore_result or self.task.ignore_result)

    @functools.cached_property
    def store_errors(self) -> bool:
        """Failures are stored unless results are ignored (and not stored even if ignored)."""
        return not self.ignore_result or bool(self.task.store_errors_even_if_ignored)

    @functools.cached_property
    def track_started(self) -> bool:
        return bool(self.task.track_started) and not self.ignore_result

    def time_limits(self) -> tuple[float | None, float | None]:
        """``(soft, hard)`` in seconds: the message's ``timelimit`` header, else the task's."""
        hard, soft = self.message.timelimit
        return (
            _positive(soft) or _positive(self.task.soft_time_limit),
            _positive(hard) or _positive(self.task.time_limit),
        )

    def expired(self, now: datetime) -> bool:
        expires = self.message.expires
        return expires is not None and make_aware(expires) <= now

    def eta_timestamp(self) -> float | None:
        """Unix time of the ``eta`` header, or None."""
        eta = self.message.eta
        return None if eta is None else make_aware(eta).timestamp()


def _positive(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if number > 0 else None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A delivery that cannot be run, and why (``reason`` is made one line)."""

    delivery: Delivery
    reason: str
    task_id: str | None = None
    task_name: str | None = None
    #: the decoded message, when decoding got that far
    message: TaskMessage | None = None
    #: stored as the task's FAILURE when the task id is known
    exc: BaseException | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", " ".join(self.reason.split()))

    @property
    def label(self) -> str:
        """``name[id]`` as far as known, for log lines."""
        if self.task_id is None and self.task_name is None:
            return f"<unknown task> (delivery {self.delivery.tag})"
        return f"{self.task_name or '<unknown task>'}[{self.task_id or '?'}]"


def _default_decoder(raw: RawMessage, accept: Iterable[str] | None) -> TaskMessage:
    """``protocol.message.decode``, imported on first use (then called directly)."""
    global _decode
    if _decode is None:
        from celeriac.protocol.message import decode

        _decode = decode
    return _decode(raw, accept)


_decode: Decoder | None = None


class RequestReader:
    """Turns deliveries into ``Request`` or ``Invalid`` values (pure: no I/O)."""

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        *,
        hostname: str,
        accept: Iterable[str] | None = None,
        max_message_size: int | None = None,
        max_deliveries: int | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self.tasks = tasks
        self.hostname = hostname
        self.accept = list(accept) if accept is not None else None
        self.max_message_size = max_message_size
        self.max_deliveries = max_deliveries
        self.decoder: Decoder = decoder or _default_decoder

    def read(self, delivery: Delivery) -> Request | Invalid:
        raw = delivery.message
        header_id = _str_or_none(raw.headers.get("id"))
        header_task = _str_or_none(raw.headers.get("task"))
        size = len(raw.body)
        if self.max_message_size and size > self.max_message_size:
            return Invalid(
                delivery,
                f"message body of {size} bytes exceeds worker_max_message_size "
                f"({self.max_message_size} bytes)",
                header_id,
                header_task,
            )
        try:
            message = self.decoder(raw, self.accept)
        except ContentDisallowed as exc:
            return Invalid(
                delivery,
                f"content type {raw.content_type!r} is not accepted "
                f"(accept_content={self.accept}){_sender(raw.headers)}: {exc}",
                header_id,
                header_task,
            )
        except DecodeError as exc:
            where = f" (field {exc.field!r})" if exc.field else ""
            sender = _sender(raw.headers)
            return Invalid(
                delivery, f"undecodable message{where}{sender}: {exc}", header_id, header_task
            )
        except Exception as exc:  # a decoder bug must not stop the worker either
            return Invalid(
                delivery,
                f"undecodable message{_sender(raw.headers)}: {type(exc).__name__}: {exc}",
                header_id,
                header_task,
            )
        return self._check(delivery, message)

    def _check(self, delivery: Delivery, message: TaskMessage) -> Request | Invalid:
        count = delivery.delivery_count
        if self.max_deliveries and count > self.max_deliveries:
            reason = (
                f"delivered {count} times without finishing (broker_max_deliveries="
                f"{self.max_deliveries}): it may be killing workers"
            )
            return self._invalid(delivery, message, reason, WorkerLostError(reason))
        task = self.tasks.get(message.task)
        if task is None:
            return self._invalid(
                delivery,
                message,
                f"unknown task {message.task!r}: not registered in this worker",
                NotRegistered(message.task),
            )
        try:
            task.check_arguments(message.args, message.kwargs)
        except TypeError as exc:
            return self._invalid(delivery, message, f"wrong arguments: {exc}", exc)
        delivery_info = {
            "exchange": "",
            "routing_key": delivery.queue,
            "priority": message.priority,
            "redelivered": delivery.redelivered,
        }
        context = from_message(message, hostname=self.hostname, delivery_info=delivery_info)
        return Request(delivery, message, task, context)

    @staticmethod
    def _invalid(
        delivery: Delivery, message: TaskMessage, reason: str, exc: BaseException
    ) -> Invalid:
        return Invalid(delivery, reason, message.id, message.task, message, exc)


def _sender(headers: Mapping[str, Any]) -> str:
    """`` (sent by <origin>, lang <lang>)`` from the message's own headers, when it has them.

    Celery puts no version in a task message: ``origin`` (``gen<pid>@<host>`` for a client, the
    node name for a worker) and ``lang`` are what identify the peer that sent it.
    """
    origin, lang = _str_or_none(headers.get("origin")), _str_or_none(headers.get("lang"))
    parts = ([f"sent by {origin}"] if origin else []) + ([f"lang {lang}"] if lang else [])
    return f" ({', '.join(parts)})" if parts else ""


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
