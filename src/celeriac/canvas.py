"""Signatures: a task call described as data, in Celery's dict form.

A ``Signature`` *is* a dict ``{"task", "args", "kwargs", "options", "subtask_type",
"immutable"}`` (Celery's key order), so a Celery client's signature dict is a valid Celeriac
signature and the reverse. ``Signature[R]`` carries the task's result type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.result import AsyncResult, EagerResult

R = TypeVar("R")


class Signature(dict[str, Any], Generic[R]):
    """A task name with partial arguments and ``apply_async`` options."""

    def __init__(
        self,
        task: str | Task[Any, R] | dict[str, Any] | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celeriac | None = None,
        **ex: Any,
    ) -> None:
        self._app = app
        if isinstance(task, dict):
            super().__init__(task)
            self.setdefault("args", [])
            self.setdefault("kwargs", {})
            self.setdefault("options", {})
            self.setdefault("subtask_type", None)
            self.setdefault("immutable", False)
            return
        name = task if isinstance(task, str) or task is None else task.name
        if task is not None and not isinstance(task, str) and app is None:
            self._app = task._app
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **ex},
            subtask_type=subtask_type,
            immutable=immutable,
        )

    # -- fields --------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.get("args") or ())

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.get("kwargs") or {})

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self.setdefault("options", {})
        return options

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def subtask_type(self) -> str | None:
        value = self.get("subtask_type")
        return str(value) if value is not None else None

    @property
    def app(self) -> Celeriac:
        if self._app is not None:
            return self._app
        from celeriac.app.base import get_current_app

        return get_current_app()

    @property
    def type(self) -> Task[Any, R]:
        """The registered task (``NotRegistered`` naming it if unknown)."""
        return self.app.tasks[self.task]

    # -- building ------------------------------------------------------------------------------
    def _merge(
        self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        merged_options = {**self.options, **options}
        if self.immutable:
            return self.args, self.kwargs, merged_options
        return (
            tuple(args or ()) + self.args,
            {**self.kwargs, **(kwargs or {})},
            merged_options,
        )

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature[R]:
        """A copy with ``args`` prepended, ``kwargs`` and options merged."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, opts)
        return Signature(
            self.task,
            new_args,
            new_kwargs,
            options=new_options,
            subtask_type=self.subtask_type,
            immutable=self.immutable,
            app=self._app,
        )

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Update the options in place; returns the signature."""
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: dict[str, Any]) -> dict[str, Any]:
        """Run ``callback`` with this task's result when it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: dict[str, Any]) -> dict[str, Any]:
        """Run ``errback`` when this task fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def freeze(self, _id: str | None = None) -> AsyncResult[R]:
        """Fix the task id now; returns the result the call will have."""
        from celeriac._internal.ids import new_id
        from celeriac.result import AsyncResult

        task_id = self.options.get("task_id") or _id or new_id()
        self.options["task_id"] = task_id
        return AsyncResult(task_id, app=self._app, task_name=self.task)

    # -- calling -------------------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the call (``args`` prepended unless immutable)."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        app = self.app
        if self.task in app.tasks:
            return self.type.apply_async(new_args, new_kwargs, **new_options)
        result: AsyncResult[R] = app.send_task(self.task, new_args, new_kwargs, **new_options)
        return result

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        return self.type.apply(new_args, new_kwargs, **new_options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        new_args, new_kwargs, _ = self._merge(args, kwargs, {})
        return self.type(*new_args, **new_kwargs)

    def __repr__(self) -> str:
        args = ", ".join(
            [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        )
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __reduce__(self) -> tuple[Any, ...]:
        return Signature, (dict(self),)

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> Signature[Any]:
        return cls(data, app=app)


def signature(
    varies: str | dict[str, Any] | Signature[Any], *args: Any, **kwargs: Any
) -> Signature[Any]:
    """Celery's ``signature()``: from a task name (with args) or a signature dict."""
    app = kwargs.pop("app", None)
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, dict):
        return Signature(varies, app=app)
    sig: Signature[Any] = Signature(varies, *args, **kwargs)
    sig._app = app
    return sig


subtask = signature


def maybe_signature(value: Any, app: Celeriac | None = None) -> Signature[Any]:
    """``value`` as a ``Signature`` (dicts are converted; signatures returned as they are)."""
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return Signature(value, app=app)
    raise TypeError(f"not a signature: {value!r}")
