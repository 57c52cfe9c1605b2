"""Celery's built-in tasks, registered in every app when it is finalized.

``celery.map`` / ``celery.starmap`` run a task function over a list in one task (``task.map``,
``task.starmap``); ``celery.chunks`` applies a chunks signature sent as a task;
``celery.accumulate`` returns its arguments (``Task.replace`` with a group uses it as the chord
body); ``celery.group`` / ``celery.chord`` apply a group or chord sent as a task by old clients;
``celery.chain`` is not a real task (as in Celery); ``celery.chord_unlock`` is what a Celery
client with a non-Redis result backend sends next to a chord: Celeriac workers join every chord
as its header tasks finish, so it has nothing left to do; ``celery.backend_cleanup`` removes
expired results. A task of the same name registered by the application wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task

logger = logging.getLogger("celeriac.builtins")


def _xmap(app: Celeriac) -> Callable[..., Any]:
    def xmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        from celeriac.canvas import signature

        function = signature(task, app=app).type
        return [function(item) for item in it]

    return xmap


def _xstarmap(app: Celeriac) -> Callable[..., Any]:
    def xstarmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        from celeriac.canvas import signature

        function = signature(task, app=app).type
        return [function(*item) for item in it]

    return xstarmap


def _chunks(app: Celeriac) -> Callable[..., Any]:
    def chunks(task: dict[str, Any], it: list[Any], n: int) -> Any:
        from celeriac.canvas import chunks as chunks_sig

        return chunks_sig(task, it, n, app=app).apply_async().as_tuple()

    return chunks


def accumulate(*args: Any, **kwargs: Any) -> Any:
    index = kwargs.get("index")
    return args[index] if index is not None else args


def _group(app: Celeriac) -> Callable[..., Any]:
    def group(
        tasks: list[dict[str, Any]],
        result: Any = None,
        group_id: str | None = None,
        partial_args: Any = (),
        add_to_parent: bool = True,
    ) -> Any:
        from celeriac.canvas import group as group_sig

        sig = group_sig(tasks, app=app)
        if group_id:
            sig.set(task_id=group_id)
        return sig.apply_async(tuple(partial_args or ())).as_tuple()

    return group


def _chord(app: Celeriac) -> Callable[..., Any]:
    def chord(header: Any, body: dict[str, Any], partial_args: Any = (), **kwargs: Any) -> Any:
        from celeriac.canvas import chord as chord_sig

        result = chord_sig(header, body, app=app).apply_async(tuple(partial_args or ()))
        return result.as_tuple()

    return chord


def chain(*args: Any, **kwargs: Any) -> None:
    raise NotImplementedError("chain is not a real task")


def chord_unlock(group_id: str, callback: Any = None, *args: Any, **kwargs: Any) -> None:
    logger.debug("chord_unlock for %s: joined natively by the header tasks", group_id)


def _backend_cleanup(app: Celeriac) -> Callable[..., Any]:
    def backend_cleanup() -> int:
        backend = app.backend
        return backend.cleanup() if backend is not None else 0

    return backend_cleanup


def register_builtins(app: Celeriac) -> None:
    """Register Celery's built-in tasks in ``app`` (those it has not registered itself)."""
    from celeriac.app.task import Task

    builtins: dict[str, Callable[..., Any]] = {
        "celery.map": _xmap(app),
        "celery.starmap": _xstarmap(app),
        "celery.chunks": _chunks(app),
        "celery.accumulate": accumulate,
        "celery.group": _group(app),
        "celery.chord": _chord(app),
        "celery.chain": chain,
        "celery.chord_unlock": chord_unlock,
        "celery.backend_cleanup": _backend_cleanup(app),
    }
    registry = app._tasks
    for name, function in builtins.items():
        if name not in registry:
            task: Task[Any, Any] = Task(function, app=app, name=name, typing=False)
            registry.register(task)


__all__ = ["register_builtins"]
