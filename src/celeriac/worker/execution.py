"""Turning what happened to a request into I/O: result records, follow-up messages, acks.

``Execution`` is called on the worker's loop with a ``Request`` and its ``Outcome`` (or with an
``Invalid`` delivery, or an expired request) and queues the I/O on a ``Sink`` (the consumer's
per-loop-turn batch). Within one batch the sink publishes first, then writes results, then
acks, so Celery's order holds: follow-ups are sent before the result is stored (its
``children`` name them) and a message is acknowledged only after its result is stored.

- ``Succeeded``: link callbacks (``embed.callbacks``) and the next chain step (``chain[-1]``,
  with ``chain[:-1]`` as its own chain; ``[]`` on the last step) are published with the return
  value prepended (unless immutable), then SUCCESS is stored, then the message is acked. A
  follow-up that cannot be built or encoded fails the task (as in Celery). Follow-ups that are
  workflows (group, chord, chain) are applied by the canvas (``worker.chords``).
- Chords: a task that belongs to a chord (``embed.chord``) reports its outcome (success,
  failure, expiry, dead letter) to the chord's join, which the sink performs after storing the
  results and before acking (``worker.chords``).
- ``Failed``: FAILURE (exception dict + traceback) is stored; errbacks run: a registered task
  whose function takes ``(request, exc, traceback)`` is called here, others are sent as tasks
  with ``args = [failed_task_id]``. Acked (or dead-lettered with
  ``task_acks_on_failure_or_timeout=False``).
- ``Retrying``: a NEW message with the same id, ``retries + 1``, the retry's ``eta``, the same
  args/kwargs/embed (or those given to ``retry``), ``parent_id`` = its own id, to the same queue;
  RETRY stored (``children`` lists the retried task); the original is acked.
- ``Rejected``: requeued (``requeue=True``) or dead-lettered with the reason. ``Ignored``:
  acked, nothing stored.

``ignore_result`` suppresses STARTED, SUCCESS and RETRY; failures (FAILURE, REVOKED) are still
stored when ``store_errors_even_if_ignored`` is set.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import signals, states
from celeriac._internal.timeutils import utcnow
from celeriac.app.context import Context, from_message
from celeriac.app.trace import (
    Failed,
    Ignored,
    Outcome,
    Rejected,
    Retrying,
    Succeeded,
    format_exc,
)
from celeriac.exceptions import NotRegistered, Reject, TaskRevokedError
from celeriac.protocol.result_meta import ResultMeta, exception_to_dict
from celeriac.worker.chords import (
    ChordPart,
    abandoned_chain,
    chord_parts,
    plan_follow_ups,
    store_chord_sizes,
)

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.protocol.envelope import RawMessage
    from celeriac.protocol.message import TaskMessage
    from celeriac.transports.base import Delivery
    from celeriac.worker.request import Invalid, Request
    from celeriac.worker.state import WorkerState

logger = logging.getLogger("celeriac.worker.execution")

#: longest repr of a return value in a log line
REPR_MAX = 1024


class Sink(Protocol):
    """Where ``Execution`` queues I/O (the consumer's ``IOBatch``)."""

    def publish(self, queue: str, message: RawMessage, eta: float | None) -> None: ...

    def store(self, meta: ResultMeta) -> None: ...

    def ack(self, delivery: Delivery) -> None: ...

    def requeue(self, delivery: Delivery) -> None: ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    def join(self, part: ChordPart) -> None: ...


def log_extra(task_id: str | None, task_name: str | None) -> dict[str, Any]:
    """``extra=`` for log records about one task (the worker's task log format uses them)."""
    return {"task_id": task_id or "???", "task_name": task_name or "???"}


def short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break the worker
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."


def seconds(runtime: float) -> str:
    return f"{runtime:.3f}" if runtime >= 0.001 else f"{runtime:.6f}"


def child_tuple(child: Any) -> Any:
    """A child result as Celery's ``[[id, parent], None]`` tuple."""
    as_tuple = getattr(child, "as_tuple", None)
    if callable(as_tuple):
        return as_tuple()
    return ((str(getattr(child, "id", child)), None), None)


def takes_request_exc_traceback(task: Task[Any, Any], sig_args: Sequence[Any]) -> bool:
    """True for an errback called in-process as ``fn(request, exc, traceback, *sig_args)``."""
    try:
        params = inspect.signature(task.run).parameters
    except (TypeError, ValueError):
        return False
    return len(params) - len(sig_args) == 3


class Execution:
    """Queues the I/O that follows a request's outcome (see the module docstring)."""

    def __init__(
        self,
        app: Celeriac,
        sink: Sink,
        state: WorkerState,
        *,
        hostname: str,
        store_results: bool = True,
        result_extended: bool = False,
    ) -> None:
        self.app = app
        self.sink = sink
        self.state = state
        self.hostname = hostname
        self.store_results = store_results
        self.result_extended = result_extended

    # -- result records ------------------------------------------------------------------------
    def _store(
        self,
        message: TaskMessage,
        status: str,
        result: Any,
        *,
        traceback: str | None = None,
        children: list[Any] | None = None,
        done: bool = True,
        queue: str | None = None,
    ) -> None:
        if not self.store_results:
            return
        extended = None
        if self.result_extended:
            extended = {
                "name": message.task,
                "args": list(message.args),
                "kwargs": dict(message.kwargs),
                "worker": self.hostname,
                "retries": message.retries,
                "queue": queue,
            }
        meta = ResultMeta(
            task_id=message.id,
            status=status,
            result=result,
            traceback=traceback,
            children=children,
            date_done=utcnow() if done else None,
            group_id=message.group,
            parent_id=message.parent_id,
            extended=extended,
        )
        self.sink.store(meta)

    def _children(self, request: Request, extra: Sequence[Any] = ()) -> list[Any]:
        return [child_tuple(c) for c in request.context.children] + list(extra)

    def _join(
        self, message: TaskMessage, state: str, value: Any, traceback: str | None = None
    ) -> None:
        """Report the outcome to the chords the task belongs to; after a failure, store the
        chain steps that will not run as failed too (see ``worker.chords``)."""
        if state != states.SUCCESS and message.chain and self.store_results:
            for meta in abandoned_chain(message, state, value, traceback):
                self.sink.store(meta)
        for part in chord_parts(self.app, message, state, value):
            self.sink.join(part)

    def _done(self, request: Request) -> None:
        """Acknowledge the message (unless it was acknowledged before running)."""
        if not request.acked:
            request.acked = True
            self.sink.ack(request.delivery)

    # -- before running ------------------------------------------------------------------------
    def started(self, request: Request) -> None:
        """STARTED, with ``track_started``."""
        if request.track_started:
            result = {"pid": os.getpid(), "hostname": self.hostname}
            self._store(request.message, states.STARTED, result, done=False, queue=request.queue)

    def expired(self, request: Request) -> None:
        """``expires`` passed before the task ran: REVOKED, acked, not run."""
        exc = TaskRevokedError("expired")
        logger.info(
            "Discarding expired task %s[%s] (expired at %s)",
            request.name,
            request.id,
            request.message.expires,
            extra=log_extra(request.id, request.name),
        )
        signals.task_revoked.send(
            sender=request.task,
            request=request.context,
            terminated=False,
            signum=None,
            expired=True,
        )
        if request.store_errors:
            self._store(
                request.message,
                states.REVOKED,
                exception_to_dict(exc),
                children=None,
                queue=request.queue,
            )
        self._join(request.message, states.REVOKED, exc)
        self._done(request)
        self.state.bump("revoked")

    async def invalid(self, invalid: Invalid) -> None:
        """A message that cannot run: one ERROR line, FAILURE when the id is known, dead letter."""
        logger.error(
            "Dead-lettered message from queue %r: task %s: %s",
            invalid.delivery.queue,
            invalid.label,
            invalid.reason,
            extra=log_extra(invalid.task_id, invalid.task_name),
        )
        message = invalid.message
        if isinstance(invalid.exc, NotRegistered):
            signals.task_unknown.send(
                sender=self,
                message=invalid.delivery.message,
                exc=invalid.exc,
                name=invalid.task_name,
                id=invalid.task_id,
            )
        else:
            signals.task_rejected.send(sender=self, message=invalid.delivery.message, exc=None)
        if message is not None and invalid.exc is not None:
            if not message.ignore_result:
                self._store(
                    message,
                    states.FAILURE,
                    exception_to_dict(invalid.exc),
                    queue=invalid.delivery.queue,
                )
            context = from_message(message, hostname=self.hostname)
            await self._errbacks(message, context, invalid.exc, "")
            self._join(message, states.FAILURE, invalid.exc)
        self.sink.dead_letter(invalid.delivery, invalid.reason)
        self.state.bump("dead_lettered")

    # -- after running -------------------------------------------------------------------------
    async def outcome(self, request: Request, outcome: Outcome) -> None:
        """Queue the I/O for ``outcome``; counters and log lines included."""
        self.state.bump("processed")
        if isinstance(outcome, Succeeded):
            await self._succeeded(request, outcome)
        elif isinstance(outcome, Failed):
            await self._failed(request, outcome)
        elif isinstance(outcome, Retrying):
            await self._retrying(request, outcome)
        elif isinstance(outcome, Rejected):
            self._rejected(request, outcome)
        else:
            self._ignored(request, outcome)

    def outcome_now(self, request: Request, outcome: Outcome) -> bool:
        """``outcome``'s I/O queued without a coroutine, when that is all there is to it: a
        success with no link callbacks and no chain (nothing to publish or await). False (and
        nothing done) otherwise: then ``await outcome(...)``."""
        if type(outcome) is not Succeeded:
            return False
        message = request.message
        if message.callbacks or message.chain:
            return False
        self.state.bump("processed")
        self._success(request, outcome, [])
        return True

    async def _succeeded(self, request: Request, outcome: Succeeded) -> None:
        try:
            follow_ups = await self._follow_ups(request, outcome.value)
        except Exception as exc:  # a callback/chain step that cannot be sent fails the task
            logger.error(
                "Task %s[%s] returned, but its callbacks/next chain step could not be sent: %s",
                request.name,
                request.id,
                short_repr(exc),
                extra=log_extra(request.id, request.name),
            )
            await self._failed(request, Failed(exc, format_exc(exc), outcome.runtime))
            return
        self._success(request, outcome, follow_ups)

    def _success(self, request: Request, outcome: Succeeded, follow_ups: list[Any]) -> None:
        """SUCCESS stored (its follow-ups already queued), chords told, the message acked."""
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Task %s[%s] succeeded in %ss: %s",
                request.name,
                request.id,
                seconds(outcome.runtime),
                short_repr(outcome.value),
                extra=log_extra(request.id, request.name),
            )
        if not request.ignore_result:
            self._store(
                request.message,
                states.SUCCESS,
                outcome.value,
                children=self._children(request, follow_ups),
                queue=request.queue,
            )
        self._join(request.message, states.SUCCESS, outcome.value)
        self._done(request)
        self.state.bump("succeeded")

    async def _follow_ups(self, request: Request, value: Any) -> list[Any]:
        """Publish link callbacks, then the next chain step; returns their child tuples."""
        found = plan_follow_ups(self.app, request.message, value)
        encoded = [(p.queue, self.app.encode(p.message), p.eta) for p in found.publications]
        await store_chord_sizes(self.app, found.chord_sizes)  # before a chord's header is sent
        for queue, raw, eta in encoded:
            self.sink.publish(queue, raw, eta)
        return found.children

    async def _failed(self, request: Request, outcome: Failed) -> None:
        exc = outcome.exc
        logger.error(
            "Task %s[%s] raised unexpected: %s\n%s",
            request.name,
            request.id,
            short_repr(exc),
            outcome.traceback.rstrip(),
            extra=log_extra(request.id, request.name),
        )
        if request.store_errors:
            self._store(
                request.message,
                states.FAILURE,
                exception_to_dict(exc),
                traceback=outcome.traceback,
                children=self._children(request),
                queue=request.queue,
            )
        await self._errbacks(request.message, request.context, exc, outcome.traceback)
        self._join(request.message, states.FAILURE, exc, outcome.traceback)
        if request.acks_late and not request.acked and not request.task.acks_on_failure_or_timeout:
            request.acked = True
            self.sink.dead_letter(
                request.delivery,
                f"task failed ({type(exc).__name__}: {exc}) and "
                "task_acks_on_failure_or_timeout is False",
            )
            self.state.bump("dead_lettered")
        else:
            self._done(request)
        self.state.bump("failed")

    async def _retrying(self, request: Request, outcome: Retrying) -> None:
        message = request.message
        options = outcome.retry.options
        try:
            retry_message = dataclasses.replace(
                message,
                args=tuple(options.get("args", message.args)),
                kwargs=dict(options.get("kwargs", message.kwargs)),
                retries=message.retries + 1,
                eta=outcome.eta,
                parent_id=message.id,
                root_id=message.root_id or message.id,
                origin=self.hostname,
                priority=int(options.get("priority", message.priority) or 0),
            )
            raw = self.app.encode(retry_message)
        except Exception as exc:
            await self._failed(request, Failed(exc, format_exc(exc), outcome.runtime))
            return
        due = outcome.eta.timestamp()
        self.sink.publish(
            str(options.get("queue") or request.queue), raw, due if due > time.time() else None
        )
        logger.info(
            "Task %s[%s] retry: %s",
            request.name,
            request.id,
            outcome.retry,
            extra=log_extra(request.id, request.name),
        )
        if not request.ignore_result:
            reason = outcome.exc if outcome.exc is not None else outcome.retry
            self._store(
                message,
                states.RETRY,
                exception_to_dict(reason),
                traceback=outcome.traceback,
                children=[((message.id, None), None)],
                done=False,
                queue=request.queue,
            )
        self._done(request)
        self.state.bump("retried")

    def _rejected(self, request: Request, outcome: Rejected) -> None:
        extra = log_extra(request.id, request.name)
        self.state.bump("rejected")
        if request.acked or not outcome.requeue:  # it will not run again
            self._join(request.message, states.FAILURE, Reject(outcome.reason, outcome.requeue))
        if request.acked:
            logger.warning(
                "Task %s[%s] rejected (%s) after its message was acknowledged (acks_late is "
                "False): nothing to requeue or dead-letter",
                request.name,
                request.id,
                outcome.reason,
                extra=extra,
            )
            return
        request.acked = True
        if outcome.requeue:
            logger.info("Task %s[%s] rejected: requeued", request.name, request.id, extra=extra)
            self.sink.requeue(request.delivery)
            self.state.bump("requeued")
            return
        reason = f"rejected by the task: {outcome.reason}"
        logger.info("Task %s[%s] %s", request.name, request.id, reason, extra=extra)
        self.sink.dead_letter(request.delivery, reason)
        self.state.bump("dead_lettered")

    def _ignored(self, request: Request, outcome: Ignored) -> None:
        logger.info(
            "Task %s[%s] ignored",
            request.name,
            request.id,
            extra=log_extra(request.id, request.name),
        )
        self._done(request)
        self.state.bump("ignored")

    # -- errbacks ------------------------------------------------------------------------------
    async def _errbacks(
        self, message: TaskMessage, context: Context, exc: BaseException, traceback: str
    ) -> None:
        for sig in message.errbacks or ():
            try:
                await self._errback(sig, message, context, exc, traceback)
            except Exception:
                logger.exception(
                    "Errback %s of task %s[%s] failed",
                    sig.get("task"),
                    message.task,
                    message.id,
                    extra=log_extra(message.id, message.task),
                )

    async def _errback(
        self,
        sig: dict[str, Any],
        message: TaskMessage,
        context: Context,
        exc: BaseException,
        traceback: str,
    ) -> None:
        sig_args = tuple(sig.get("args") or ())
        task = self.app.tasks.get(str(sig.get("task")))
        if task is not None and takes_request_exc_traceback(task, sig_args):
            args = (context, exc, traceback, *sig_args)
            kwargs = dict(sig.get("kwargs") or {})
            if task.is_async:
                await task(*args, **kwargs)
            else:
                call = functools.partial(contextvars.copy_context().run, task, *args, **kwargs)
                await asyncio.get_running_loop().run_in_executor(None, call)
            return
        publication = self.app.publication_from_signature(
            sig, args_prefix=(message.id,), parent=message
        )
        raw = self.app.encode(publication.message)
        self.sink.publish(publication.queue, raw, publication.eta)
