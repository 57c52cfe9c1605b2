"""Celeriac's one exception tree, with Celery's names.

::

    CeleriacError
    ├── ImproperlyConfigured            a setting or URL is wrong (names it, lists accepted values)
    ├── DecodeError                     a message/record could not be decoded (names the field)
    │   └── ContentDisallowed           content type not in ``accept_content``
    ├── EncodeError                     a value could not be serialised
    ├── NotRegistered                   unknown task name
    ├── OperationalError                broker/backend I/O failed (driver errors translated here)
    ├── TimeoutError                    ``AsyncResult.get`` gave up waiting
    ├── TaskError                       base of errors about one task run
    │   ├── TaskPredicate               control flow raised inside tasks
    │   │   ├── Retry
    │   │   ├── Ignore
    │   │   └── Reject
    │   ├── MaxRetriesExceededError
    │   ├── TaskRevokedError
    │   ├── WorkerLostError
    │   ├── TimeLimitExceeded
    │   ├── ChordError
    │   ├── InvalidTaskError            the message is not a runnable task (dead-lettered)
    │   └── RemoteError                 a failure whose original type cannot be imported
    └── IncompleteStream
    SoftTimeLimitExceeded               raised *inside* a task; an Exception, not a CeleriacError
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class CeleriacError(Exception):
    """Base of every error Celeriac raises."""


class ImproperlyConfigured(CeleriacError):
    """A setting, URL or option has a wrong value."""


class DecodeError(CeleriacError):
    """A message or record could not be decoded; ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ContentDisallowed(DecodeError):
    """The message's content type is not in ``accept_content``."""


class EncodeError(CeleriacError):
    """A value could not be serialised."""


class NotRegistered(CeleriacError, KeyError):
    """No task of that name is registered."""

    def __str__(self) -> str:
        return f"Task of name {self.args[0]!r} is not registered" if self.args else "NotRegistered"


class OperationalError(CeleriacError):
    """A broker or result backend operation failed (connection refused, lost, ...)."""


class TimeoutError(CeleriacError):
    """The operation timed out."""


class IncompleteStream(CeleriacError):
    """Found the end of a stream of data, but the data is not complete."""


class TaskError(CeleriacError):
    """Base of errors about a task run."""


class TaskPredicate(TaskError):
    """Base of the exceptions a task raises to steer the worker."""


class Retry(TaskPredicate):
    """The task is to be retried (raised by ``Task.retry``)."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        is_eager: bool = False,
        sig: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        self.options: dict[str, Any] = kwargs
        super().__init__(message, exc, when)

    def humanize(self) -> str:
        if isinstance(self.when, (int, float)):
            return f"in {self.when}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.exc is not None:
            return f"Retry {self.humanize()}: {self.exc!r}"
        return f"Retry {self.humanize()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.message, self.exc, self.when)


RetryTaskError = Retry


class Ignore(TaskPredicate):
    """The task asks the worker to do nothing more with it (no state stored)."""


class Reject(TaskPredicate):
    """The task asks the worker to reject its message (``requeue`` puts it back)."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self) -> str:
        return f"reject requeue={self.requeue}: {self.reason}"


class MaxRetriesExceededError(TaskError):
    """The task may not be retried any more."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        self.task_args = task_args
        self.task_kwargs = task_kwargs
        super().__init__(*args)


class TaskRevokedError(TaskError):
    """The task was revoked or expired and so was not run."""


class WorkerLostError(TaskError):
    """The process running the task died."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and was killed."""

    def __str__(self) -> str:
        return f"TimeLimitExceeded{self.args!r}"


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task that ran past its soft time limit; the task may catch it."""

    def __str__(self) -> str:
        return "SoftTimeLimitExceeded()"


class ChordError(TaskError):
    """A task of a chord's header failed."""


class InvalidTaskError(TaskError):
    """The message cannot be run as a task (bad arguments, malformed, ...)."""


class RemoteError(TaskError):
    """A task failed with an exception whose type cannot be imported here.

    ``exc_type`` and ``exc_module`` name the original type; ``args`` are its arguments.
    """

    def __init__(self, exc_type: str, exc_module: str | None, *args: Any) -> None:
        self.exc_type = exc_type
        self.exc_module = exc_module
        super().__init__(*args)

    def __str__(self) -> str:
        where = f"{self.exc_module}.{self.exc_type}" if self.exc_module else self.exc_type
        msg = ", ".join(str(a) for a in self.args)
        return f"{where}: {msg}" if msg else where


class QueueNotFound(ImproperlyConfigured):
    """A task was routed to a queue that is not defined and may not be created."""


class SecurityError(CeleriacError):
    """A message or record tried something unsafe (e.g. a non-exception as exception)."""


__all__ = [
    "CeleriacError",
    "ChordError",
    "ContentDisallowed",
    "DecodeError",
    "EncodeError",
    "Ignore",
    "ImproperlyConfigured",
    "IncompleteStream",
    "InvalidTaskError",
    "MaxRetriesExceededError",
    "NotRegistered",
    "OperationalError",
    "QueueNotFound",
    "Reject",
    "RemoteError",
    "Retry",
    "RetryTaskError",
    "SecurityError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPredicate",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]
