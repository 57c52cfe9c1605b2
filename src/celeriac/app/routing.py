"""Which queue a task goes to: ``queue=`` option > ``task_routes`` > the task's ``queue`` >
``task_default_queue``. Routes are Celery's forms: a dict (exact names and glob patterns), a list
of dicts/router callables, or a callable ``(name, args, kwargs, options, task=None, **kw)``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

from celeriac.exceptions import ImproperlyConfigured, QueueNotFound


def _match_map(routes: Mapping[str, Any], name: str) -> Any:
    if name in routes:
        return routes[name]
    for pattern, route in routes.items():
        if isinstance(pattern, re.Pattern):
            if pattern.match(name):
                return route
        elif any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return route
    return None


def _route_one(
    router: Any, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any
) -> Any:
    if isinstance(router, Mapping):
        return _match_map(router, name)
    if callable(router):
        return router(name, args, kwargs, options, task=task)
    if isinstance(router, str):
        raise ImproperlyConfigured(
            f"task_routes entry {router!r}: string routers are not supported; give a mapping "
            "or a callable"
        )
    raise ImproperlyConfigured(f"task_routes entry {router!r} is not a mapping or a callable")


def lookup_route(
    routes: Any, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None
) -> dict[str, Any]:
    """The route options (``queue``, ``routing_key``, ``priority``...) ``task_routes`` gives."""
    if not routes:
        return {}
    routers = routes if isinstance(routes, (list, tuple)) else [routes]
    for router in routers:
        found = _route_one(router, name, args, kwargs, options, task)
        if found is None:
            continue
        if isinstance(found, str):
            return {"queue": found}
        if isinstance(found, Mapping):
            return dict(found)
    return {}


def queue_name(queue: Any) -> str:
    """A queue given as a name or as an object with ``.name`` (kombu's ``Queue``)."""
    if isinstance(queue, str):
        return queue
    name = getattr(queue, "name", None)
    if isinstance(name, str):
        return name
    raise ImproperlyConfigured(f"queue {queue!r} is neither a name nor has a .name")


def known_queues(task_queues: Any) -> set[str] | None:
    """Names of the queues declared in ``task_queues`` (None when not declared)."""
    if not task_queues:
        return None
    if isinstance(task_queues, Mapping):
        return {str(k) for k in task_queues}
    return {queue_name(q) for q in task_queues}


def check_queue(queue: str, task_queues: Any, create_missing: bool) -> str:
    declared = known_queues(task_queues)
    if declared is not None and not create_missing and queue not in declared:
        raise QueueNotFound(
            f"Queue {queue!r} missing from task_queues ({', '.join(sorted(declared))}) and "
            "task_create_missing_queues is False"
        )
    return queue


Router = Callable[..., Any]
