"""``xmap``, ``xstarmap`` and ``chunks``: a task applied to many arguments.

``task.map(it)`` / ``task.starmap(it)`` are one message for the built-in task ``celery.map`` /
``celery.starmap``, which calls the task function on each item in order, in one worker, and
returns the list. ``task.chunks(it, n)`` cuts ``it`` in parts of ``n`` and sends one
``starmap`` task per part, as a group (``.group()``): its result is a list of lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.canvas.base import (
    TYPES,
    Membership,
    Plan,
    Signature,
    copy_options,
    maybe_signature,
)
from celeriac.canvas.primitives import group

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.result import GroupResult

_Group = group


def _items(it: Iterable[Any]) -> list[Any]:
    """The arguments of a map as a list (``range`` and tuple items as lists: JSON carries
    them as arrays)."""
    return [list(item) if isinstance(item, (range, tuple)) else item for item in it]


class xmap(Signature[Any]):
    """``task.map(it)``: one message; the worker returns ``[task(item) for item in it]``."""

    _task_name = "celery.map"
    _kind = "xmap"

    def __init__(
        self, task: Any, it: Iterable[Any], app: Celeriac | None = None, **options: Any
    ) -> None:
        sig = maybe_signature(task, app=app)
        Signature.__init__(
            self,
            self._task_name,
            (),
            {"task": sig, "it": _items(it)},
            options=options,
            subtask_type=self._kind,
            immutable=True,
            app=app or sig._app,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> xmap:
        kwargs = data.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or (), app=app, **(data.get("options") or {}))

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> xmap:
        kw = self["kwargs"]
        options = {**copy_options(self.options), **opts}
        return type(self)(kw["task"], kw["it"], app=self._app, **options)

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"[{kw['task'].task}(x) for x in {kw['it']!r}]"


class xstarmap(xmap):
    """``task.starmap(it)``: one message; the worker returns ``[task(*args) for args in it]``."""

    _task_name = "celery.starmap"
    _kind = "xstarmap"

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"[{kw['task'].task}(*x) for x in {kw['it']!r}]"


class chunks(Signature[Any]):
    """``task.chunks(it, n)``: ``it`` cut in parts of ``n`` items, one ``starmap`` per part."""

    def __init__(
        self, task: Any, it: Iterable[Any], n: int, app: Celeriac | None = None, **options: Any
    ) -> None:
        sig = maybe_signature(task, app=app)
        Signature.__init__(
            self,
            "celery.chunks",
            (),
            {"task": sig, "it": _items(it), "n": int(n)},
            options=options,
            subtask_type="chunks",
            immutable=True,
            app=app or sig._app,
        )
        self._group: _Group | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> chunks:
        kw = data.get("kwargs") or {}
        options = dict(data.get("options") or {})
        return cls(kw["task"], kw.get("it") or (), kw.get("n") or 1, app=app, **options)

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> chunks:
        kw = self["kwargs"]
        options = {**copy_options(self.options), **opts}
        return chunks(kw["task"], kw["it"], kw["n"], app=self._app, **options)

    def group(self) -> _Group:
        """The group of ``starmap`` tasks, one per chunk."""
        kw = self["kwargs"]
        items, size = list(kw["it"]), max(1, int(kw["n"]))
        parts = (items[i : i + size] for i in range(0, len(items), size))
        members = [xstarmap(kw["task"], part, app=self._app) for part in parts]
        return _Group(members, app=self._app, **copy_options(self.options))

    def _as_group(self) -> _Group:
        if self._group is None:
            self._group = self.group()
        return self._group

    def _freeze(self, _id: str | None, at: Membership) -> Any:
        return self._as_group()._freeze(_id, at)

    def _join_count(self) -> int:
        return self._as_group()._join_count()

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        return self._as_group()._plan(plan, args, kwargs, options)

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult[Any]:
        return self.group().apply_async(args, kwargs, **options)

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult[Any]:
        return self.group().apply(args, kwargs, **options)

    def __call__(self, **options: Any) -> GroupResult[Any]:
        return self.apply_async(**options)

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"{kw['task'].task}.chunks({len(kw['it'])} items, {kw['n']})"


TYPES.update(xmap=xmap, xstarmap=xstarmap, chunks=chunks)
