"""Sending workflows: ``apply_composite`` (a client's ``apply_async``), ``send_plan``,
``plan_signature`` (the worker's follow-ups and chord bodies), ``replacement_for``
(``Task.replace``) and helpers over signature dicts (``is_composite``, ``leaves``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.app import context as ctx
from celeriac.canvas.base import Membership, Plan, Signature, maybe_signature, signature
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

#: signature types applied by the canvas (the others are one task message each)
COMPOSITE_TYPES = frozenset({"chain", "group", "chord", "chunks"})
#: messages published per round trip
PUBLISH_BATCH = 1000


def apply_composite(
    sig: Signature[Any],
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
) -> Any:
    """``apply_async`` of a composite: eager when ``task_always_eager``; else a frozen copy's
    plan is sent (all or nothing: every call's arguments are checked before any is sent)."""
    app = sig.app
    if app.conf.task_always_eager:
        return sig.apply(args, kwargs, **options)
    add_to_parent = options.pop("add_to_parent", True)
    plan = Plan(app)
    result = sig.clone()._plan(plan, tuple(args or ()), dict(kwargs or {}), options)
    send_plan(plan)
    current = ctx.top()
    if add_to_parent and current is not None and not current[1].called_directly:
        current[1].children.append(result)
    return result


def send_plan(plan: Plan) -> None:
    """Store the plan's chord sizes, then publish its calls (with ``send_task``'s signals)."""
    from celeriac import signals

    app = plan.app
    if plan.chord_sizes:
        backend = app.backend
        if backend is None:
            raise ImproperlyConfigured("A chord needs a result backend to join its header")
        for group_id, size in plan.chord_sizes:
            backend.set_chord_size(group_id, size)
    items = []
    for call in plan.calls:
        task = app.tasks.get(call.name) if call.name in app.tasks else None
        if task is not None and task.typing:
            task.check_arguments(call.args, call.kwargs)
        options = {k: v for k, v in call.options.items() if k not in ("retry", "retry_policy")}
        publication = app.prepare(call.name, call.args, call.kwargs, task=task, **options)
        items.append(
            (call.name, publication.queue, app.encode(publication.message), publication.eta)
        )
    for name, queue, raw, _ in items:
        signals.before_task_publish.send(
            sender=name,
            body=raw.body,
            exchange="",
            routing_key=queue,
            headers=raw.headers,
            properties=raw.properties,
            declare=[],
            retry_policy=None,
        )
    for start in range(0, len(items), PUBLISH_BATCH):
        batch = items[start : start + PUBLISH_BATCH]
        app.transport.publish_many([(queue, raw, eta) for _, queue, raw, eta in batch])
    for name, queue, raw, _ in items:
        signals.after_task_publish.send(
            sender=name, body=raw.body, headers=raw.headers, exchange="", routing_key=queue
        )


def plan_signature(
    app: Celeriac,
    sig: dict[str, Any],
    args: Sequence[Any] = (),
    options: dict[str, Any] | None = None,
) -> tuple[Plan, Any]:
    """The plan (and result) of applying the signature dict ``sig`` with ``args`` prepended:
    a worker's follow-up or chord body."""
    plan = Plan(app)
    result = maybe_signature(sig, app=app)._plan(plan, tuple(args), {}, dict(options or {}))
    return plan, result


def replacement_for(app: Celeriac, request: ctx.Context, sig: Any) -> Signature[Any]:
    """What ``Task.replace(sig)`` sends: ``sig`` with the running task's id, callbacks,
    errbacks, group/chord membership and the rest of its chain (a group becomes a chord whose
    body returns the group's list, so that one result stands for it)."""
    from celeriac.canvas.maps import chunks
    from celeriac.canvas.primitives import chain, chord, group

    new: Signature[Any] = maybe_signature(sig, app=app).clone()
    if "chord" in new.options:
        raise ImproperlyConfigured("A signature replacing a task must not be part of a chord")
    if isinstance(new, chain) and not new.tasks:
        raise ImproperlyConfigured("Cannot replace a task with an empty chain")
    if isinstance(new, (group, chunks)):
        body: Signature[Any] = Signature("celery.accumulate", kwargs={"index": 0}, app=app)
        new = chord(new.group() if isinstance(new, chunks) else new, body, app=app)
    for callback in request.callbacks or ():
        new.link(callback)
    for errback in request.errbacks or ():
        new.link_error(errback)
    nesting = int(getattr(request.message, "replaced_task_nesting", 0) or 0) + 1
    at = Membership(request.group, request.chord, request.root_id, None, request.group_index)
    new._freeze(request.id, at)
    new.set(replaced_task_nesting=nesting)
    for step in reversed(request.chain or ()):
        new = new | signature(step, app=app).set(replaced_task_nesting=nesting)
    return new


def is_composite(sig: dict[str, Any]) -> bool:
    """True for a chain, group, chord or chunks (applied by the canvas, not one message)."""
    return sig.get("subtask_type") in COMPOSITE_TYPES


def leaves(sig: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every single task (message) of a signature dict, in order."""
    kind = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    if kind in ("chain", "group"):
        for task in kwargs.get("tasks") or ():
            yield from leaves(task)
    elif kind == "chord":
        header = kwargs.get("header") or ()
        parts = [header] if isinstance(header, dict) else list(header)
        yield from itertools.chain.from_iterable(leaves(part) for part in parts)
        if kwargs.get("body"):
            yield from leaves(kwargs["body"])
    else:
        yield sig
