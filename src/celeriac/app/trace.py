"""Running one task call and turning what happened into an ``Outcome`` value.

Used by the worker's pools and by eager ``Task.apply`` alike, so both have the same semantics:
the request context is pushed, Celery's signals fire (``task_prerun``, ``task_success``,
``task_failure``, ``task_retry``, ``task_postrun``), ``autoretry_for`` turns matching exceptions
into retries, and ``Retry``/``Ignore``/``Reject`` become their outcomes. No I/O happens here: the
caller stores results, publishes retries and follow-ups, and acknowledges.
"""

from __future__ import annotations

import time
import traceback as tb_module
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.app import context as ctx
from celeriac.exceptions import Ignore, Reject, Retry

if TYPE_CHECKING:
    from celeriac.app.context import Context
    from celeriac.app.task import Task


@dataclass(frozen=True, slots=True)
class Succeeded:
    value: Any
    runtime: float


@dataclass(frozen=True, slots=True)
class Failed:
    exc: BaseException
    traceback: str
    runtime: float


@dataclass(frozen=True, slots=True)
class Retrying:
    """The task asked to run again at ``eta`` (aware UTC); ``exc`` is the reason stored in RETRY."""

    exc: BaseException | None
    eta: datetime
    retry: Retry
    traceback: str
    runtime: float


@dataclass(frozen=True, slots=True)
class Rejected:
    requeue: bool
    reason: Any
    runtime: float


@dataclass(frozen=True, slots=True)
class Ignored:
    runtime: float


Outcome = Succeeded | Failed | Retrying | Rejected | Ignored


def format_exc(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))


def _start(task: Task[Any, Any], request: Context) -> Any:
    token = ctx.push(task, request)
    signals.task_prerun.send(
        sender=task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs
    )
    return token


def _finish(task: Task[Any, Any], request: Context, token: Any, outcome: Outcome) -> Outcome:
    if isinstance(outcome, Succeeded):
        signals.task_success.send(sender=task, result=outcome.value)
    elif isinstance(outcome, Failed):
        signals.task_failure.send(
            sender=task,
            task_id=request.id,
            exception=outcome.exc,
            args=request.args,
            kwargs=request.kwargs,
            traceback=outcome.exc.__traceback__,
            einfo=outcome.traceback,
        )
    elif isinstance(outcome, Retrying):
        signals.task_retry.send(
            sender=task, request=request, reason=outcome.exc, einfo=outcome.traceback
        )
    state = type(outcome).__name__
    retval = outcome.value if isinstance(outcome, Succeeded) else getattr(outcome, "exc", None)
    signals.task_postrun.send(
        sender=task,
        task_id=request.id,
        task=task,
        args=request.args,
        kwargs=request.kwargs,
        retval=retval,
        state=state,
    )
    ctx.pop(token)
    return outcome


def _classify(
    task: Task[Any, Any], request: Context, exc: BaseException, started: float
) -> Outcome:
    runtime = time.monotonic() - started
    if isinstance(exc, Retry):
        return _retrying(exc, runtime)
    if isinstance(exc, Ignore):
        return Ignored(runtime)
    if isinstance(exc, Reject):
        return Rejected(exc.requeue, exc.reason, runtime)
    if task.autoretry_for and isinstance(exc, tuple(task.autoretry_for)):
        try:
            task.retry_for_autoretry(exc, request)
        except Retry as retry:
            return _retrying(retry, runtime)
        except BaseException as final:  # max retries exceeded: fail with the original
            return Failed(final, format_exc(final), runtime)
    return Failed(exc, format_exc(exc), runtime)


def _retrying(retry: Retry, runtime: float) -> Outcome:
    from celeriac.app.task import retry_eta

    reason = retry.exc if retry.exc is not None else retry
    return Retrying(reason, retry_eta(retry), retry, format_exc(reason), runtime)


def execute(task: Task[Any, Any], request: Context) -> Outcome:
    """Run a synchronous task function with ``request``'s args; never raises (but BaseExceptions
    such as KeyboardInterrupt/SystemExit propagate)."""
    token = _start(task, request)
    started = time.monotonic()
    try:
        value = task.run(*request.args, **request.kwargs)
    except Exception as exc:
        outcome = _classify(task, request, exc, started)
    else:
        outcome = Succeeded(value, time.monotonic() - started)
    return _finish(task, request, token, outcome)


async def aexecute(task: Task[Any, Any], request: Context) -> Outcome:
    """Run an ``async def`` task function on the running loop."""
    token = _start(task, request)
    started = time.monotonic()
    try:
        value = await task.run(*request.args, **request.kwargs)
    except Exception as exc:
        outcome = _classify(task, request, exc, started)
    else:
        outcome = Succeeded(value, time.monotonic() - started)
    return _finish(task, request, token, outcome)
