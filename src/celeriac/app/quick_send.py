"""The quick path of ``delay``/``apply_async``/``send_task`` without options: a template per task.

Most calls of a task look alike: no options, sent from outside a task, to the same queue with
the same headers. For those, ``quick_send`` keeps per task the ``Publisher`` its transport
offers (``Transport.publisher``: Redis has one) with the ``EnvelopeTemplate`` of the task's
message, built once by the full path (``messages.prepare`` + ``protocol.message.encode``), and
renders each call's envelope from it: a task id, the JSON body, ``argsrepr``/``kwargsrepr``.
The bytes sent are exactly the full path's (the template is made by it; tests compare).

It answers None, and the caller takes the full path, whenever anything could make the message
differ: options given, a running task (parent and root ids, inherited priority), receivers on
``before_task_publish``/``after_task_publish`` (they are given the message's parts), routes
(a router may look at the arguments), a task with ``expires`` (a time per message), a serializer
other than JSON or compression, an app class that overrides ``prepare`` or ``encode``, or a
transport without a publisher.

Settings are read through ``Settings.resolved()``: a setting assigned anew is seen by the next
call. ``task_routes`` is checked on every call (a route added in place takes the full path at
once); ``task_queues`` changed in place is seen when the template is next rebuilt: assign a new
value to change it at run time. A template is rebuilt when
the settings change (``Settings.resolved`` is a new dict then), when one of the task's own
options changes (``queue``, ``priority``, ``ignore_result``, ...: compared on every call),
and when the transport is replaced, which covers a fork: the app opens a new transport in a
forked child (``origin`` holds the pid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac._internal.ids import new_id
from celeriac.app import context as ctx
from celeriac.app.messages import _reply_to, prepare
from celeriac.exceptions import OperationalError
from celeriac.protocol.message import REPR_MAXSIZE, encode, saferepr
from celeriac.protocol.serialization import json_dumps

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.transports.base import Publisher, Transport

#: templates kept per app at most (``send_task`` may send to any number of names)
MAX_ENTRIES = 1000
#: the embed of a message with no callbacks, errbacks, chain or chord (its JSON body's tail)
_EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _task_options(task: Task[Any, Any] | None) -> tuple[Any, ...]:
    """The task's attributes that ``prepare`` reads (a program may change them at run time)."""
    if task is None:
        return ()
    return (
        task.queue,
        task.priority,
        task.expires,
        task.ignore_result,
        task.shadow_name,
        task.serializer,
        task.compression,
    )


class _Entry:
    """A task's publisher, valid while the settings, the task's attributes and the transport
    are the same."""

    __slots__ = ("conf", "options", "publisher", "transport")

    def __init__(
        self,
        conf: dict[str, Any],
        options: tuple[Any, ...],
        transport: Transport,
        publisher: Publisher | None,
    ) -> None:
        self.conf = conf
        self.options = options
        self.transport = transport
        self.publisher = publisher

    def holds(self, conf: dict[str, Any], options: tuple[Any, ...], transport: Transport) -> bool:
        return self.conf is conf and self.transport is transport and self.options == options


def _overridden(app: Celeriac) -> bool:
    """Whether the app's class changes how messages are made (then every call takes the full
    path: an override may look at each call, e.g. to add a header from a context variable)."""
    from celeriac.app.base import Celeriac

    kind = type(app)
    return kind.prepare is not Celeriac.prepare or kind.encode is not Celeriac.encode


def _build(
    app: Celeriac,
    name: str,
    task: Task[Any, Any] | None,
    conf: dict[str, Any],
    options: tuple[Any, ...],
) -> _Entry | None:
    """The entry of a task, or None to take the full path this time (the transport could not
    declare the queue: the full path retries as the publish retry policy says)."""
    transport = app.transport
    publisher = None
    if (task is None or task.expires is None) and not _overridden(app):
        publication = prepare(app, name, (), {}, task=task)
        message = publication.message
        plain = message.serializer == "json" and not message.compression
        if plain and publication.eta is None and message.expires is None:
            try:
                publisher = transport.publisher(publication.queue, encode(message), root_is_id=True)
            except OperationalError:
                return None
    return _Entry(conf, options, transport, publisher)


def body_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The JSON body of a call without callbacks, chain or chord (``encode``'s, exactly)."""
    return json_dumps((args, kwargs, _EMPTY_EMBED)).encode("ascii")


def quick_send(
    app: Celeriac, name: str, task: Task[Any, Any] | None, args: Any, kwargs: Any
) -> tuple[str, Publisher, bytes] | None:
    """(task id, publisher, payload) of a call of task ``name`` that fits a template, or None
    (see above). ``task``: the registered task (``delay``), or None (``send_task``: the
    message then takes only the app's settings, as on the full path)."""
    if ctx.top() is not None:
        return None
    if signals.before_task_publish._receivers or signals.after_task_publish._receivers:
        return None
    if args is not None and type(args) is not tuple and type(args) is not list:
        return None  # the full path names the error
    if kwargs is not None and type(kwargs) is not dict:
        return None
    conf = app.conf.resolved()
    if conf["task_routes"]:
        return None
    transport = app.transport
    options = _task_options(task)
    key = (name, task is None)
    entries = app._quick_entries
    entry: _Entry | None = entries.get(key)
    if entry is None or not entry.holds(conf, options, transport):
        entry = _build(app, name, task, conf, options)
        if entry is None:
            return None
        if len(entries) >= MAX_ENTRIES:  # names sent by ``send_task`` are not bounded
            entries.clear()
        entries[key] = entry
    publisher = entry.publisher
    if publisher is None:
        return None
    task_id = new_id()
    args = tuple(args) if args else ()
    kwargs = dict(kwargs) if kwargs else {}
    payload = publisher.template.render(
        task_id,
        body_json(args, kwargs),
        saferepr(args, REPR_MAXSIZE),
        saferepr(kwargs, REPR_MAXSIZE),
        _reply_to(),
    )
    return task_id, publisher, payload
