"""Results: ``AsyncResult[R]`` (a task's state and value in the result backend), ``EagerResult``
(an outcome computed here), ``GroupResult`` (several results together).

``get()`` waits through the backend's ``wait_for`` (notification-based where the backend can),
re-raises a failed task's exception as its original type when importable (else ``RemoteError``
carrying the type name), and refuses to run inside a task, where it could deadlock the worker.

Workflows: ``parent`` links a chain's results back to its first task (a chord's result to its
header's ``GroupResult``); ``children`` are rebuilt from the ``children`` tuples of a result
record (``result_from_tuple``: ``[[id, parent], None]`` for a task, ``[[group_id, parent],
[members...]]`` for a group); ``collect()`` walks the graph.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac import states
from celeriac.app import context as ctx
from celeriac.exceptions import ImproperlyConfigured, IncompleteStream, TimeoutError

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultBackend
    from celeriac.protocol.result_meta import ResultMeta

R = TypeVar("R")


def _assert_will_not_block(task_id: str) -> None:
    current = ctx.top()
    if current is None:
        return
    task, request = current
    if request.is_eager or request.called_directly:
        return
    name = getattr(task, "name", "?")
    raise RuntimeError(
        f"Never call result.get() within a task: task {name}[{request.id}] waits on {task_id}, "
        "which can deadlock the worker. Use a chain or chord, or pass "
        "disable_sync_subtasks=False if you must."
    )


def _exception_of(meta: ResultMeta) -> BaseException:
    from celeriac.protocol.result_meta import exception_from_dict

    value = meta.result
    if isinstance(value, BaseException):
        return value
    if isinstance(value, dict) and "exc_type" in value:
        return exception_from_dict(value)
    from celeriac.exceptions import RemoteError

    return RemoteError(meta.status, None, value)


class AsyncResult(Generic[R]):
    """A task's result as the result backend knows it."""

    def __init__(
        self,
        id: str,
        backend: ResultBackend | None = None,
        task_name: str | None = None,
        app: Celeriac | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        self.id = id
        self.task_id = id
        self._app = app
        self._backend = backend
        self.name = task_name
        self.parent = parent
        self._cache: ResultMeta | None = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def app(self) -> Celeriac:
        if self._app is not None:
            return self._app
        from celeriac.app.base import get_current_app

        return get_current_app()

    @property
    def backend(self) -> ResultBackend:
        backend = self._backend or self.app.backend
        if backend is None:
            raise ImproperlyConfigured(
                "No result backend is configured: set result_backend (e.g. "
                "'sqlite://', 'redis://localhost/0') to read task results."
            )
        return backend

    def _get_meta(self) -> ResultMeta:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_meta(self.id)
        if meta.status in states.READY_STATES:
            self._cache = meta
        return meta

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._get_meta().status

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception for failed/retried/revoked tasks."""
        meta = self._get_meta()
        if meta.status in states.EXCEPTION_STATES:
            return _exception_of(meta)
        return meta.result

    info = result

    @property
    def traceback(self) -> str | None:
        return self._get_meta().traceback

    @property
    def date_done(self) -> datetime | None:
        """When the task finished, as an aware UTC datetime (Celery 5.3 writes no offset)."""
        from celeriac.protocol.result_meta import date_done_utc

        return date_done_utc(self._get_meta())

    @property
    def children(self) -> list[Any]:
        """Results of the tasks this one sent (callbacks, next chain step, groups it started)."""
        found: list[Any] = []
        for child in self._get_meta().children or []:
            result = result_from_tuple(child, app=self._app)
            if isinstance(result, AsyncResult):
                result._backend = self._backend
            if result is not None:
                found.append(result)
        return found

    def iterdeps(self, intermediate: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(parent, result)`` of this result and its descendants, breadth first;
        ``IncompleteStream`` at a result that is not ready (unless ``intermediate``)."""
        stack: deque[tuple[Any, Any]] = deque([(None, self)])
        while stack:
            parent, node = stack.popleft()
            yield parent, node
            if node.ready():
                stack.extend((node, child) for child in node.children or [])
            elif not intermediate:
                raise IncompleteStream(f"result {node.id} is not ready")

    def collect(self, intermediate: bool = False, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """``(result, value)`` of this result and every descendant (see ``iterdeps``)."""
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**kwargs)

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting -------------------------------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> R:
        """Wait for the task to be ready and return its value (raise its error with propagate).

        ``timeout`` in seconds raises ``celeriac.exceptions.TimeoutError``.
        """
        if disable_sync_subtasks:
            _assert_will_not_block(self.id)
        meta = self._cache or self.backend.wait_for(self.id, timeout=timeout, interval=interval)
        self._cache = meta
        value: R = self._value(meta, propagate)
        return value

    wait = get

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> R:
        """``get`` for async callers: waits without blocking the event loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: self.get(timeout, propagate, interval, disable_sync_subtasks=False)
        )

    def _value(self, meta: ResultMeta, propagate: bool) -> Any:
        if meta.status in states.PROPAGATE_STATES:
            exc = _exception_of(meta)
            if propagate:
                raise exc
            return exc
        return meta.result

    def forget(self) -> None:
        """Remove the result from the backend."""
        self._cache = None
        self.backend.forget(self.id)

    def as_tuple(self) -> tuple[Any, ...]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __str__(self) -> str:
        return self.id


def result_from_tuple(value: Any, app: Celeriac | None = None) -> Any:
    """The result a Celery result tuple describes: ``[[id, parent], None]`` is an
    ``AsyncResult``, ``[[group_id, parent], [members...]]`` a ``GroupResult`` (a plain id is an
    ``AsyncResult``); None for anything else."""
    if isinstance(value, str):
        return AsyncResult(value, app=app)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    head, nodes = value
    if isinstance(head, (list, tuple)) and head:
        result_id, parent_tuple = head[0], head[1] if len(head) > 1 else None
    else:
        result_id, parent_tuple = head, None
    if not isinstance(result_id, str):
        return None
    parent = result_from_tuple(parent_tuple, app) if parent_tuple else None
    if isinstance(nodes, (list, tuple)):
        members = [result_from_tuple(node, app) for node in nodes]
        return GroupResult(result_id, [m for m in members if m is not None], app=app, parent=parent)
    return AsyncResult(result_id, app=app, parent=parent)


class EagerResult(AsyncResult[R]):
    """The outcome of a task run here (``apply`` / ``task_always_eager``)."""

    def __init__(
        self,
        id: str,
        ret_value: Any,
        state: str,
        traceback: str | None = None,
        name: str | None = None,
        app: Celeriac | None = None,
    ) -> None:
        super().__init__(id, task_name=name, app=app)
        self._state = state
        self._value_ = ret_value
        self._traceback = traceback

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._value_

    info = result

    @property
    def traceback(self) -> str | None:
        return self._traceback

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> R:
        if self._state in states.PROPAGATE_STATES and propagate:
            raise self._value_
        return self._value_  # type: ignore[no-any-return]

    def forget(self) -> None:
        """Nothing is stored for an eager result."""

    @property
    def date_done(self) -> datetime | None:
        return None


class GroupResult(Generic[R]):
    """Results of a group of tasks, in the group's order."""

    def __init__(
        self,
        id: str | None = None,
        results: Sequence[AsyncResult[R]] | None = None,
        app: Celeriac | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        self.id = id
        self.results: list[AsyncResult[R]] = list(results or [])
        self._app = app
        self.parent = parent

    @property
    def app(self) -> Celeriac:
        if self._app is not None:
            return self._app
        from celeriac.app.base import get_current_app

        return get_current_app()

    def __iter__(self) -> Iterator[AsyncResult[R]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[R]:
        return self.results[index]

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def waiting(self) -> bool:
        """True while any member is not ready."""
        return not self.ready()

    @property
    def children(self) -> list[AsyncResult[R]]:
        return self.results

    def as_tuple(self) -> tuple[Any, ...]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), [r.as_tuple() for r in self.results])

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> list[R]:
        """Every member's value, in order; ``timeout`` bounds the whole wait."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[R] = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0 and not result.ready():
                raise TimeoutError(f"The operation timed out waiting for group {self.id}")
            values.append(result.get(remaining, propagate, interval, disable_sync_subtasks))
        return values

    join = get
    join_native = get

    def save(self) -> GroupResult[R]:
        backend = self.app.backend
        if backend is None or self.id is None:
            raise ImproperlyConfigured("GroupResult.save needs a result backend and a group id")
        backend.save_group(self.id, [r.id for r in self.results])
        return self

    @classmethod
    def restore(cls, group_id: str, app: Celeriac | None = None) -> GroupResult[Any] | None:
        from celeriac.app.base import get_current_app

        app = app or get_current_app()
        backend = app.backend
        if backend is None:
            raise ImproperlyConfigured("GroupResult.restore needs a result backend")
        ids = backend.restore_group(group_id)
        if ids is None:
            return None
        return cls(group_id, [AsyncResult(i, app=app) for i in ids], app=app)

    def forget(self) -> None:
        for result in self.results:
            result.forget()
        if self.id is not None and self.app.backend is not None:
            self.app.backend.delete_group(self.id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"
