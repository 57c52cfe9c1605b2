"""``Context`` — what a running task sees as ``self.request`` — and the current-task stack.

The worker (or eager ``apply``) builds a ``Context`` from the task message and pushes it while the
task function runs; ``current_task`` and ``Task.request`` read the top of the stack. The stack is
a ``contextvars.ContextVar``, so threads and asyncio tasks each see their own.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Context:
    """``self.request`` inside a task, with Celery's attribute names."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    is_eager: bool = False
    called_directly: bool = True
    hostname: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: dict[str, Any] | None = None
    chain: list[dict[str, Any]] | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool = False
    shadow: str | None = None
    priority: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    #: the decoded message this run came from (``TaskMessage``), when run by a worker
    message: Any = None
    #: children sent while running (AsyncResult objects), stored in the result's ``children``
    children: list[Any] = field(default_factory=list)

    @property
    def group_id(self) -> str | None:
        return self.group

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


_STACK: contextvars.ContextVar[tuple[tuple[Any, Context], ...]] = contextvars.ContextVar(
    "celeriac_task_stack", default=()
)


def push(task: Any, request: Context) -> contextvars.Token[tuple[tuple[Any, Context], ...]]:
    """Make ``task`` running with ``request``; pass the token to ``pop``."""
    return _STACK.set((*_STACK.get(), (task, request)))


def pop(token: contextvars.Token[tuple[tuple[Any, Context], ...]]) -> None:
    _STACK.reset(token)


def top() -> tuple[Any, Context] | None:
    """``(task, request)`` of the innermost running task, or None."""
    stack = _STACK.get()
    return stack[-1] if stack else None


def from_message(
    message: Any,
    *,
    hostname: str | None = None,
    delivery_info: dict[str, Any] | None = None,
    is_eager: bool = False,
) -> Context:
    """The ``Context`` for running the decoded ``TaskMessage`` ``message``."""
    return Context(
        id=message.id,
        task=message.task,
        args=tuple(message.args),
        kwargs=dict(message.kwargs),
        retries=message.retries,
        eta=message.eta,
        expires=message.expires,
        is_eager=is_eager,
        called_directly=False,
        hostname=hostname,
        root_id=message.root_id or message.id,
        parent_id=message.parent_id,
        group=message.group,
        group_index=message.group_index,
        chord=message.chord,
        chain=message.chain,
        callbacks=message.callbacks,
        errbacks=message.errbacks,
        correlation_id=message.id,
        reply_to=message.reply_to,
        origin=message.origin,
        delivery_info=dict(delivery_info or {}),
        headers=dict(message.extra_headers),
        timelimit=message.timelimit,
        ignore_result=message.ignore_result,
        shadow=message.shadow,
        priority=message.priority,
        message=message,
    )
