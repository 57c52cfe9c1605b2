"""Sending workflows: ``apply_composite`` (a client's ``apply_async``), ``send_plan``,
``plan_signature`` (the worker's follow-ups and chord bodies), ``replacement_for``
(``Task.replace``) and helpers over signature dicts (``is_composite``, ``leaves``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from celeriac._internal.ids import new_id
from celeriac.app import context as ctx
from celeriac.app.messages import Publication
from celeriac.canvas.base import Call, Membership, Plan, Signature, maybe_signature, signature
from celeriac.exceptions import ImproperlyConfigured, OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.protocol.message import REPR_MAXSIZE, TaskMessage, saferepr
from celeriac.protocol.serialization import json_dumps
from celeriac.transports.base import Rendered

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.transports.base import Publisher

#: signature types applied by the canvas (the others are one task message each)
COMPOSITE_TYPES = frozenset({"chain", "group", "chord", "chunks"})
#: messages published per round trip
PUBLISH_BATCH = 1000


def apply_composite(
    sig: Signature[Any],
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    *,
    private: bool = False,
) -> Any:
    """``apply_async`` of a composite: eager when ``task_always_eager``; else a frozen copy's
    plan is sent (all or nothing: every call's arguments are checked before any is sent).
    ``private``: ``sig`` is already a copy of the caller's own (frozen as it is, not copied);
    a signature whose plan changes nothing in it (``_plans_in_place``) is not copied either."""
    app = sig.app
    if app.conf.task_always_eager:
        return sig.apply(args, kwargs, **options)
    add_to_parent = options.pop("add_to_parent", True)
    plan = Plan(app)
    mine = sig if private or sig._plans_in_place(options) else sig.clone()
    result = mine._plan(plan, tuple(args or ()), dict(kwargs or {}), options)
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
    hooked = bool(signals.before_task_publish._receivers or signals.after_task_publish._receivers)
    items = prepare_calls(app, plan.calls, render=not hooked)
    if not hooked:
        _publish(app, items)
        return
    raws = cast("list[tuple[str, str, RawMessage, float | None]]", items)  # none rendered
    for name, queue, raw, _ in raws:
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
    _publish(app, items)
    for name, queue, raw, _ in raws:
        signals.after_task_publish.send(
            sender=name, body=raw.body, headers=raw.headers, exchange="", routing_key=queue
        )


def _publish(app: Celeriac, items: Sequence[Prepared]) -> None:
    """Publish in order, ``PUBLISH_BATCH`` per round trip: with the transport's
    ``publish_many``, or, when some are ``Rendered``, with a publisher's ``send_many`` (which
    takes rendered and plain messages together)."""
    sender = next((m.publisher for _, _, m, _ in items if isinstance(m, Rendered)), None)
    for start in range(0, len(items), PUBLISH_BATCH):
        batch = items[start : start + PUBLISH_BATCH]
        if sender is None:
            plain = cast("list[tuple[str, str, RawMessage, float | None]]", batch)
            app.transport.publish_many([(queue, raw, eta) for _, queue, raw, eta in plain])
        else:
            sender.send_many([m if isinstance(m, Rendered) else (q, m, e) for _, q, m, e in batch])


#: the options that differ between the members of a group (the rest is shared)
PER_MEMBER = ("task_id", "group_index")
#: what ``send_plan`` leaves out of a call's options
NOT_SENT = ("retry", "retry_policy")
_NOT_SHARED = frozenset(PER_MEMBER + NOT_SENT)
_MISSING = object()


#: what ``prepare_calls`` gives per call: (task name, queue, encoded message, due time)
Prepared = tuple[str, str, RawMessage | Rendered, float | None]


class _Template:
    """The encoded message of a call, reused for the next calls of the same task whose options
    are the same objects but for ``PER_MEMBER`` (a group's members): ``prepare`` and the
    serialisation of the embedded callbacks/chord/chain happen once per group; each member
    gets its own id, arguments, ``group_index`` and ``argsrepr`` in the same wire format."""

    __slots__ = (
        "embed_tail", "inherited_root", "name", "publisher", "queue", "raw", "shared", "tried",
    )  # fmt: skip

    def __init__(
        self, name: str, shared: dict[str, Any], queue: str, message: TaskMessage, raw: RawMessage
    ) -> None:
        self.name = name
        self.shared = shared
        self.queue = queue
        self.raw = raw
        head = f"[{json_dumps(message.args)}, {json_dumps(message.kwargs)}, "
        body = raw.body.decode("ascii")
        if not body.startswith(head):  # pragma: no cover - json.dumps of a tuple is a list
            raise AssertionError("unexpected JSON body layout")
        self.embed_tail = body[len(head) :]  # the embed object and the closing bracket
        root = message.root_id if message.root_id != message.id else None
        self.inherited_root = shared.get("root_id") or root
        #: set by ``prepare_calls`` when the members are rendered by the transport's publisher
        self.publisher: Publisher | None = None
        #: whether the transport was asked for a publisher (once, at the second member)
        self.tried = False

    def fits(self, name: str, options: dict[str, Any]) -> bool:
        """Whether a call of ``name`` with ``options`` (a call's own) is the template's but
        for ``PER_MEMBER``: one pass, no copy."""
        if name != self.name:
            return False
        mine, seen = self.shared, 0
        for key, value in options.items():
            if key in _NOT_SHARED:
                continue
            if mine.get(key, _MISSING) is not value:
                return False
            seen += 1
        return seen == len(mine)

    def prepared(self, call: Call, options: dict[str, Any]) -> Prepared:
        """The template's message with this call's id, arguments and ``group_index``."""
        task_id = options.get("task_id") or new_id()
        args, kwargs = tuple(call.args), call.kwargs
        kwargs_json = json_dumps(kwargs) if kwargs else "{}"
        body = f"[{json_dumps(args)}, {kwargs_json}, {self.embed_tail}"
        if self.publisher is not None:
            payload = self.publisher.template.render(
                task_id,
                body.encode("ascii"),
                saferepr(args, REPR_MAXSIZE),
                saferepr(kwargs, REPR_MAXSIZE) if kwargs else "{}",
                self.raw.properties["reply_to"],
                options.get("group_index"),
            )
            return (self.name, self.queue, Rendered(self.publisher, payload), None)
        headers = dict(self.raw.headers)
        headers["id"] = task_id
        headers["group_index"] = options.get("group_index")
        headers["root_id"] = self.inherited_root or task_id
        headers["argsrepr"] = saferepr(args, REPR_MAXSIZE)
        headers["kwargsrepr"] = saferepr(kwargs, REPR_MAXSIZE) if kwargs else "{}"
        properties = dict(self.raw.properties)
        properties["correlation_id"] = task_id
        raw = RawMessage(
            body.encode("ascii"), self.raw.content_type, self.raw.content_encoding, headers,
            properties,
        )  # fmt: skip
        return (self.name, self.queue, raw, None)


def _reusable(app: Celeriac, publication: Publication) -> bool:
    """Whether a call's message can stand for its group: JSON, not compressed, no time in it
    (``eta`` and ``expires`` are per message), no router that could route by the arguments,
    no parent/root id of its own to keep."""
    message = publication.message
    if message.serializer != "json" or message.compression or message.extra_properties:
        return False
    if message.eta is not None or message.expires is not None:
        return False
    return not app.conf.task_routes


def _publisher(app: Celeriac, template: _Template) -> Publisher | None:
    """The transport's publisher for a template's members (None: they are sent plain)."""
    root_is_id = template.inherited_root is None
    try:
        return app.transport.publisher(template.queue, template.raw, root_is_id=root_is_id)
    except OperationalError:  # could not declare the queue: the plain publish retries
        return None


def prepare_calls(app: Celeriac, calls: Sequence[Call], *, render: bool = False) -> list[Prepared]:
    """(task name, queue, encoded message, due time) of every call, each call's arguments
    checked against its task first.

    Calls in a row of the same task with the same option objects (a group's members) share
    one ``prepare`` and one serialisation of what they embed (``_Template``). With ``render``
    and a transport that offers a ``Publisher`` for them, the calls after the first are
    ``Rendered`` by its template (nobody is given their headers: no publish signal)."""
    template: _Template | None = None
    out: list[Prepared] = []
    fitting: set[tuple[str, int, tuple[str, ...]]] = set()  # shapes that bind: bind once
    for call in calls:
        task = app.tasks.get(call.name) if call.name in app.tasks else None
        if task is not None and task.typing:
            shape = (call.name, len(call.args), tuple(call.kwargs))
            if shape not in fitting:
                task.check_arguments(call.args, call.kwargs)
                fitting.add(shape)
        if template is not None and template.fits(call.name, call.options):
            if render and not template.tried:  # a second member: the template pays off
                template.tried = True
                template.publisher = _publisher(app, template)
            out.append(template.prepared(call, call.options))
            continue
        options = {k: v for k, v in call.options.items() if k not in NOT_SENT}
        shared = {k: v for k, v in options.items() if k not in PER_MEMBER}
        publication = app.prepare(call.name, call.args, call.kwargs, task=task, **options)
        raw = app.encode(publication.message)
        template = None
        if _reusable(app, publication):
            template = _Template(call.name, shared, publication.queue, publication.message, raw)
        out.append((call.name, publication.queue, raw, publication.eta))
    return out


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
