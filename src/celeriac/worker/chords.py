"""Workflows in the worker: follow-ups that are workflows, and the chord join (no polling).

Follow-ups
    ``plan_follow_ups`` turns a successful task's link callbacks and next chain step into
    messages. A plain signature is one message (``embed.chain`` = the rest of the chain); a
    chain, group, chord or chunks is applied by the canvas (``canvas.plan_signature``): its
    messages get this task as parent, and the sizes of the chords it starts are stored
    (``store_chord_sizes``) before any of them is published.

The join
    A task whose message carries ``embed.chord`` (a chord header task, or the last task of a
    chain or the body of a chord nested in a header) reports its outcome when it finishes:
    success, failure, expiry (REVOKED), a dead-lettered message, a reject without requeue.
    ``chord_parts`` makes the ``ChordPart`` values; the worker's I/O batch joins the parts of
    one loop turn together (``join_chords``), after it stored their results and before it
    acknowledges their messages:

    1. ``AsyncResultBackend.chord_join_many``: one atomic add per part (deduplicated by
       ``<task_id>:<group_index>``, so a redelivered or duplicated header task counts once);
       the part that makes the count reach the header size claims the join. A failure claims
       at once: the chord fails without waiting for the rest of its header.
    2. For a claimed join: its entries in header order; the body is sent with the list of
       results (``[[r0, r1, ...]]``, parent = the last header task) - or, if a header task
       failed, FAILURE with ``ChordError("Dependency <id> raised ...")`` is stored for every
       task of the body, and the body's errbacks run (``link_error`` on the chord).
    3. The join is marked done (``chord_finish``): late duplicates are ignored.

    Chains that stop: when a task fails, the steps of its chain that will not run are stored as
    failed (``abandoned_chain``, as Celery 5 does), and if the chain ends in a task that would
    report to a chord, a failure is reported on that task's behalf (otherwise the chord would
    wait forever); a failed chord body does the same for the chord it belongs to.

    A claimant that dies before step 3 leaves the claim to lapse (``JOIN_CLAIM_SECONDS``); its
    header task's message was not acknowledged, so it is redelivered and completes the join.
    A crash between publishing the body and step 3 can send the body twice (same task id).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac._internal.timeutils import utcnow
from celeriac.app.context import from_message
from celeriac.app.trace import format_exc
from celeriac.canvas import is_composite, leaves, plan_signature
from celeriac.exceptions import ChordError
from celeriac.protocol.message import TaskMessage
from celeriac.protocol.result_meta import ResultMeta, exception_to_dict

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.messages import Publication
    from celeriac.backends.base import AsyncResultBackend
    from celeriac.transports.base import AsyncTransport

logger = logging.getLogger("celeriac.worker.chords")

#: a join that keeps failing is given up after this many attempts (the batch retries it with
#: backoff, about a minute in all), so that one broken chord cannot stall the worker's acks
JOIN_ATTEMPTS = 12


@dataclass(slots=True)
class ChordPart:
    """One task's outcome reported to the chord ``group_id`` (see the module docstring)."""

    app: Celeriac
    group_id: str
    task_id: str
    group_index: int | None
    state: str  # SUCCESS, or FAILURE/REVOKED (the chord fails)
    value: Any  # the return value, or the exception
    body: dict[str, Any]  # the chord's body signature (embed.chord)
    message: TaskMessage  # the message that finished: the body's parent
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0


@dataclass(slots=True)
class FollowUps:
    """Messages to publish after a task, chord sizes to store before, their result tuples."""

    publications: list[Publication] = field(default_factory=list)
    chord_sizes: list[tuple[str, int]] = field(default_factory=list)
    children: list[Any] = field(default_factory=list)

    def extend(self, other: FollowUps) -> None:
        self.publications += other.publications
        self.chord_sizes += other.chord_sizes
        self.children += other.children


# -- follow-ups --------------------------------------------------------------------------------
def _child_tuple(result: Any) -> Any:
    members = getattr(result, "results", None)
    if members is not None:
        return ((result.id, None), [_child_tuple(m) for m in members])
    return ((result.id, None), None)


def follow_up(
    app: Celeriac,
    sig: dict[str, Any],
    args: Sequence[Any],
    parent: TaskMessage,
    chain: list[dict[str, Any]] | None = None,
) -> FollowUps:
    """The messages that apply ``sig`` with ``args`` prepended, sent because of ``parent``."""
    if not is_composite(sig):
        pub = app.publication_from_signature(sig, args_prefix=args, parent=parent, chain=chain)
        return FollowUps([pub], [], [((pub.message.id, None), None)])
    plan, result = plan_signature(app, sig, args, {"chain": chain} if chain else None)
    defaults = {
        "parent_id": parent.id,
        "root_id": parent.root_id or parent.id,
        "priority": parent.priority,
    }
    publications = [
        app.prepare(call.name, call.args, call.kwargs, **{**defaults, **call.options})
        for call in plan.calls
    ]
    return FollowUps(publications, list(plan.chord_sizes), [_child_tuple(result)])


def plan_follow_ups(app: Celeriac, message: TaskMessage, value: Any) -> FollowUps:
    """Link callbacks, then the next chain step (``chain[-1]``, the rest as its chain)."""
    found = FollowUps()
    for sig in message.callbacks or ():
        found.extend(follow_up(app, sig, (value,), message))
    if message.chain:
        *rest, step = message.chain
        found.extend(follow_up(app, step, (value,), message, chain=list(rest)))
    return found


def _store_sizes(app: Celeriac, sizes: Sequence[tuple[str, int]]) -> None:
    backend = app.backend
    if backend is None:
        from celeriac.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("A chord needs a result backend: this worker has none")
    for group_id, size in sizes:
        backend.set_chord_size(group_id, size)


async def store_chord_sizes(app: Celeriac, sizes: Sequence[tuple[str, int]]) -> None:
    """Store the sizes of chords a follow-up starts (before its header is published)."""
    if sizes:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _store_sizes, app, list(sizes))


# -- parts -------------------------------------------------------------------------------------
def reporting_leaves(sig: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks of ``sig`` that will report to an enclosing chord (``options.chord`` set)."""
    options = sig.get("options") or {}
    if options.get("chain"):  # the rest of a chain runs after it: its end reports
        return reporting_leaves(options["chain"][0])
    kind = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    if kind == "chain":
        tasks = kwargs.get("tasks") or []
        return reporting_leaves(tasks[-1]) if tasks else []
    if kind == "group":
        return [leaf for task in kwargs.get("tasks") or () for leaf in reporting_leaves(task)]
    if kind == "chord":
        return reporting_leaves(kwargs["body"]) if kwargs.get("body") else []
    if kind == "chunks":
        return []
    return [sig] if options.get("chord") else []


def _stand_ins(
    app: Celeriac, sig: dict[str, Any], state: str, value: Any, message: TaskMessage
) -> list[ChordPart]:
    """Parts reported on behalf of ``sig``'s reporting tasks, which will not run. Their claim
    tokens derive from the ids, so a retried join (or a redelivered message) reuses them."""
    parts = []
    for leaf in reporting_leaves(sig):
        options = leaf.get("options") or {}
        group_id, task_id = options.get("group_id"), options.get("task_id")
        if group_id and task_id:
            index = options.get("group_index")
            body = dict(options["chord"])
            token = uuid.uuid5(uuid.NAMESPACE_OID, f"{message.id}:{task_id}").hex
            part = ChordPart(app, group_id, task_id, index, state, value, body, message, token)
            parts.append(part)
    return parts


def chord_parts(app: Celeriac, message: TaskMessage, state: str, value: Any) -> list[ChordPart]:
    """What ``message``'s outcome reports to chords: its own part (a chord header task), and
    when it did not succeed, parts for the end of its chain, which will never run."""
    parts = []
    if message.chord and message.group:
        body = dict(message.chord)
        index = message.group_index
        parts.append(ChordPart(app, message.group, message.id, index, state, value, body, message))
    if state != states.SUCCESS and message.chain:
        parts += _stand_ins(app, message.chain[0], state, value, message)
    return parts


def abandoned_chain(
    message: TaskMessage, state: str, exc: BaseException, traceback: str | None
) -> list[ResultMeta]:
    """The records of the chain steps that will not run after ``message`` failed: ``state``
    with its exception (as Celery 5 stores them), so that waiting on them does not hang."""
    return [
        ResultMeta(
            task_id=str(leaf["options"]["task_id"]),
            status=state,
            result=exception_to_dict(exc),
            traceback=traceback,
            children=[],
            date_done=utcnow(),
            group_id=leaf["options"].get("group_id"),
        )
        for step in message.chain or ()
        for leaf in leaves(step)
        if (leaf.get("options") or {}).get("task_id")
    ]


# -- the join ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Completion:
    follow_ups: FollowUps = field(default_factory=FollowUps)
    failures: list[ResultMeta] = field(default_factory=list)
    errbacks: list[dict[str, Any]] = field(default_factory=list)
    body_message: TaskMessage | None = None
    error: BaseException | None = None
    cascade: list[ChordPart] = field(default_factory=list)


async def join_chords(
    parts: Sequence[ChordPart], backend: AsyncResultBackend, transport: AsyncTransport
) -> None:
    """Join ``parts`` (one loop turn's) and complete the chords they fill (module docstring).

    An error is raised for the caller to retry the whole call (adds are idempotent, claims are
    kept by their token) until ``JOIN_ATTEMPTS``; then the parts are given up, logged.
    """
    try:
        await _join(parts, backend, transport)
    except Exception as exc:
        for part in parts:
            part.attempts += 1
        if max(part.attempts for part in parts) < JOIN_ATTEMPTS:
            raise
        logger.error(
            "Giving up joining %d chord part(s) after %d attempts (%r): chords %s may not complete",
            len(parts),
            JOIN_ATTEMPTS,
            exc,
            ", ".join(sorted({part.group_id for part in parts})),
        )


async def _join(
    parts: Sequence[ChordPart], backend: AsyncResultBackend, transport: AsyncTransport
) -> None:
    pending = list(parts)
    while pending:
        adds = [
            backend.sync.chord_add(
                p.group_id,
                p.task_id,
                p.group_index,
                p.state,
                _entry_value(backend, p),
                p.token,
                claim_now=p.state != states.SUCCESS,
            )
            for p in pending
        ]
        joined = await backend.chord_join_many(adds)
        cascade: list[ChordPart] = []
        for part, state in zip(pending, joined, strict=True):
            if state.claimed:
                cascade += await _complete(part, backend, transport)
        pending = cascade


def _entry_value(backend: AsyncResultBackend, part: ChordPart) -> Any:
    """The value to store in the join; one the serializer refuses becomes an EncodeError."""
    from celeriac.exceptions import EncodeError
    from celeriac.protocol import serialization

    value = part.value
    if isinstance(value, BaseException):
        return value
    try:
        serialization.dumps(value, backend.sync.serializer)
    except (EncodeError, TypeError, ValueError) as exc:
        part.state = states.FAILURE
        return EncodeError(f"The result of task {part.task_id} could not be serialised: {exc}")
    return value


async def _complete(
    part: ChordPart, backend: AsyncResultBackend, transport: AsyncTransport
) -> list[ChordPart]:
    """Fire the body of ``part``'s chord (or fail it), then mark the join done."""
    try:
        entries = await backend.chord_entries(part.group_id)
        completion = _completion(part, entries)
    except Exception as exc:
        if _is_io_error(exc):
            raise
        logger.exception("Chord %s: could not read its results", part.group_id)
        completion = _failed(part, ChordError(f"Join error: {exc!r}"))
    sent = completion.follow_ups
    for group_id, size in sent.chord_sizes:
        await backend.set_chord_size(group_id, size)
    items = [(p.queue, part.app.encode(p.message), p.eta) for p in sent.publications]
    if items:
        await transport.publish_many(items)
    if completion.failures:
        await backend.store_many(completion.failures)
    if completion.error is not None:
        await _local_errbacks(part.app, completion)
    await backend.chord_finish(part.group_id, part.token)
    return completion.cascade


def _is_io_error(exc: BaseException) -> bool:
    from celeriac.exceptions import OperationalError

    return isinstance(exc, (OperationalError, OSError, asyncio.TimeoutError))


def _completion(part: ChordPart, entries: Sequence[tuple[str, str, Any]]) -> _Completion:
    values = []
    for task_id, state, result in entries:
        if state in states.PROPAGATE_STATES:
            return _failed(part, ChordError(f"Dependency {task_id} raised {result!r}"))
        values.append(result)
    logger.debug("Chord %s complete: sending its body %s", part.group_id, part.body.get("task"))
    try:
        return _Completion(follow_up(part.app, part.body, ([*values],), part.message))
    except Exception as exc:
        logger.exception("Chord %s: its body could not be sent", part.group_id)
        return _failed(part, ChordError(f"Callback error: {exc!r}"))


def _failed(part: ChordPart, error: ChordError) -> _Completion:
    """FAILURE for every task of the body, its errbacks, and the chords it belonged to."""
    body = part.body
    logger.error(
        "Chord %s failed: %s; its body %s will not run", part.group_id, error, body.get("task")
    )
    options = body.get("options") or {}
    body_id = str(options.get("task_id") or part.group_id)
    message = TaskMessage(
        id=body_id,
        task=str(body.get("task")),
        root_id=part.message.root_id or part.message.id,
        parent_id=part.message.id,
        group=options.get("group_id"),
        priority=part.message.priority,
        errbacks=_errbacks_of(body),
    )
    traceback = format_exc(error)
    failures = [
        ResultMeta(
            task_id=str(leaf["options"]["task_id"]),
            status=states.FAILURE,
            result=exception_to_dict(error),
            traceback=traceback,
            children=[],
            date_done=utcnow(),
        )
        for leaf in leaves(body)
        if (leaf.get("options") or {}).get("task_id")
    ]
    completion = _Completion(failures=failures, body_message=message, error=error)
    completion.errbacks = list(message.errbacks or ())
    completion.follow_ups = _errback_messages(part.app, completion, message)
    completion.cascade = _stand_ins(part.app, body, states.FAILURE, error, message)
    return completion


def _errbacks_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``link_error`` signatures of a body and of its tasks, without duplicates."""
    found: dict[str, dict[str, Any]] = {}
    for sig in [body, *leaves(body)]:
        for errback in (sig.get("options") or {}).get("link_error") or ():
            found.setdefault(json.dumps(errback, sort_keys=True, default=repr), dict(errback))
    return list(found.values())


def _takes_three(app: Celeriac, sig: dict[str, Any]) -> bool:
    from celeriac.worker.execution import takes_request_exc_traceback

    task = app.tasks.get(str(sig.get("task"))) if sig.get("task") in app.tasks else None
    return task is not None and takes_request_exc_traceback(task, tuple(sig.get("args") or ()))


def _errback_messages(app: Celeriac, completion: _Completion, body: TaskMessage) -> FollowUps:
    """Errbacks sent as tasks get the body's id (those taking a request run here instead)."""
    found = FollowUps()
    for sig in completion.errbacks:
        if not _takes_three(app, sig):
            pub = app.publication_from_signature(sig, args_prefix=(body.id,), parent=body)
            found.publications.append(pub)
    return found


async def _local_errbacks(app: Celeriac, completion: _Completion) -> None:
    """Errbacks whose task takes ``(request, exc, traceback)``, called here as in Celery."""
    message, error = completion.body_message, completion.error
    assert message is not None and error is not None
    context = from_message(replace(message, errbacks=completion.errbacks))
    for sig in completion.errbacks:
        if not _takes_three(app, sig):
            continue
        task = app.tasks[str(sig["task"])]
        args = (context, error, format_exc(error), *(sig.get("args") or ()))
        try:
            if task.is_async:
                await task(*args, **dict(sig.get("kwargs") or {}))
            else:
                call = functools.partial(
                    contextvars.copy_context().run, task, *args, **dict(sig.get("kwargs") or {})
                )
                await asyncio.get_running_loop().run_in_executor(None, call)
        except Exception:
            logger.exception("Errback %s of chord body %s failed", sig.get("task"), message.id)


__all__ = [
    "ChordPart",
    "FollowUps",
    "abandoned_chain",
    "chord_parts",
    "join_chords",
    "plan_follow_ups",
    "reporting_leaves",
    "store_chord_sizes",
]
