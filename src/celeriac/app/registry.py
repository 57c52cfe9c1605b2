"""The task registry: task name -> Task, plus the process-wide list of ``shared_task`` tasks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import NotRegistered

if TYPE_CHECKING:
    from celeriac.app.task import Task

#: tasks made with ``shared_task``: visible in every app's registry
SHARED_TASKS: dict[str, Task[Any, Any]] = {}


class TaskRegistry(Mapping[str, "Task[Any, Any]"]):
    """Name -> Task for one app; ``shared_task`` tasks are visible in every registry."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> Task[Any, Any]:
        self._tasks[task.name] = task
        return task

    def unregister(self, name: str) -> None:
        if self._tasks.pop(name, None) is None:
            raise NotRegistered(name)

    def __getitem__(self, name: str) -> Task[Any, Any]:
        task = self._tasks.get(name) or SHARED_TASKS.get(name)
        if task is None:
            raise NotRegistered(name)
        return task

    def __contains__(self, name: object) -> bool:
        return name in self._tasks or name in SHARED_TASKS

    def __iter__(self) -> Iterator[str]:
        yield from self._tasks
        yield from (name for name in SHARED_TASKS if name not in self._tasks)

    def __len__(self) -> int:
        return len(set(self._tasks) | set(SHARED_TASKS))

    def user_tasks(self) -> list[str]:
        """Registered names, sorted, without Celeriac's built-in ``celery.*`` tasks."""
        return sorted(name for name in self if not name.startswith("celery."))
