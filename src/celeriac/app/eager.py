"""Eager execution (``Task.apply``, ``task_always_eager``): run here, with a worker's semantics.

The same ``trace.execute`` the worker uses runs the function; a retry runs again at once (eager
runs do not wait for countdowns, as in Celery) until it succeeds, fails, or exhausts
``max_retries``; link callbacks and errbacks are applied; ``task_eager_propagates`` (or
``throw=True``) re-raises a failure; ``task_store_eager_result`` stores the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac._internal.ids import new_id
from celeriac._internal.timeutils import utcnow
from celeriac.app import context as ctx
from celeriac.app import trace

if TYPE_CHECKING:
    from celeriac.app.task import Task
    from celeriac.result import EagerResult


def _run(task: Task[Any, Any], request: ctx.Context) -> trace.Outcome:
    if not task.is_async:
        return trace.execute(task, request)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(trace.aexecute(task, request))
    # Called from inside a running loop: run the coroutine on a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, trace.aexecute(task, request)).result()


def _request(
    task: Task[Any, Any],
    task_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retries: int,
    options: dict[str, Any],
) -> ctx.Context:
    parent = ctx.top()
    parent_request = parent[1] if parent is not None else None
    root_id = parent_request.root_id if parent_request and parent_request.root_id else task_id
    return ctx.Context(
        id=task_id,
        task=task.name,
        args=args,
        kwargs=kwargs,
        retries=retries,
        is_eager=True,
        called_directly=False,
        root_id=root_id,
        parent_id=parent_request.id if parent_request else None,
        group=options.get("group_id"),
        headers=options.get("headers"),
        delivery_info={"is_eager": True},
    )


def _signatures(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def apply_eagerly(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> EagerResult[Any]:
    """Run ``task`` now; returns an ``EagerResult`` holding the outcome."""
    from celeriac.result import EagerResult

    conf = task.app.conf
    task_id = options.get("task_id") or new_id()
    retries = int(options.get("retries") or 0)
    throw = options.get("throw")
    if throw is None:
        throw = conf.task_eager_propagates
    while True:
        request = _request(task, task_id, args, kwargs, retries, options)
        outcome = _run(task, request)
        if not isinstance(outcome, trace.Retrying):
            break
        retries += 1
        args = tuple(outcome.retry.options.get("args", args))
        kwargs = dict(outcome.retry.options.get("kwargs", kwargs))
    state, value, traceback = _state_of(outcome)
    _follow_up(task, outcome, request, options)
    if conf.task_store_eager_result and task.app.backend is not None:
        _store(task, task_id, state, value, traceback)
    if isinstance(outcome, trace.Failed) and throw:
        raise outcome.exc
    return EagerResult(task_id, value, state, traceback=traceback, name=task.name, app=task.app)


def _state_of(outcome: trace.Outcome) -> tuple[str, Any, str | None]:
    if isinstance(outcome, trace.Succeeded):
        return states.SUCCESS, outcome.value, None
    if isinstance(outcome, trace.Failed):
        return states.FAILURE, outcome.exc, outcome.traceback
    if isinstance(outcome, trace.Rejected):
        return states.REJECTED, outcome.reason, None
    return states.IGNORED, None, None


def _follow_up(
    task: Task[Any, Any], outcome: trace.Outcome, request: ctx.Context, options: dict[str, Any]
) -> None:
    from celeriac.canvas import maybe_signature

    if isinstance(outcome, trace.Succeeded):
        for sig in _signatures(options.get("link")):
            maybe_signature(sig, app=task.app).apply_async((outcome.value,))
    elif isinstance(outcome, trace.Failed):
        for sig in _signatures(options.get("link_error")):
            errback = maybe_signature(sig, app=task.app)
            errback_task = task.app.tasks.get(errback.task) if errback.task else None
            if errback_task is not None and _takes_three(errback_task):
                errback_task(request, outcome.exc, outcome.traceback)
            else:
                errback.apply_async((request.id,))


def _takes_three(task: Task[Any, Any]) -> bool:
    import inspect

    try:
        params = inspect.signature(task.run).parameters
    except (TypeError, ValueError):
        return False
    return len(params) == 3


def _store(task: Task[Any, Any], task_id: str, state: str, value: Any, tb: str | None) -> None:
    from celeriac.protocol.result_meta import ResultMeta, exception_to_dict

    result = exception_to_dict(value) if isinstance(value, BaseException) else value
    backend = task.app.backend
    if backend is not None:
        backend.store_result(
            ResultMeta(
                task_id=task_id,
                status=state,
                result=result,
                traceback=tb,
                children=[],
                date_done=utcnow(),
            )
        )
