"""The canvas: signatures (a task call described as data) and workflows made of them.

A ``Signature`` *is* a dict in Celery's form ``{"task", "args", "kwargs", "options",
"subtask_type", "immutable"}`` (Celery's key order), so a Celery client's signature dict is a
valid Celeriac signature and the reverse. Composites keep their parts in ``kwargs`` as Celery
does (spec §2.5)::

    chain    task "celery.chain"    subtask_type "chain"     kwargs {"tasks": [...]}
    group    task "celery.group"    subtask_type "group"     kwargs {"tasks": [...]}
    chord    task "celery.chord"    subtask_type "chord"     kwargs {"header", "body", "kwargs"}
    chunks   task "celery.chunks"   subtask_type "chunks"    kwargs {"task", "it", "n"}
    xmap     task "celery.map"      subtask_type "xmap"      kwargs {"task", "it"}
    xstarmap task "celery.starmap"  subtask_type "xstarmap"  kwargs {"task", "it"}

Composition: ``sig | sig`` and ``sig | chain`` make a chain (nested chains are flattened);
``group | sig`` (and a group followed by anything in a chain) makes a chord; ``chord | sig``
extends the chord's body.

Sending works in two steps, as in Celery. ``freeze`` fixes the ids: every task id, the group id
and ``group_index`` of chord header members, the chord body (``embed.chord``) carried by the
tasks that report to a chord; it returns the result the workflow will have, with ``parent``
links. ``_plan`` then lists what must be sent as a ``Plan``: chord sizes to store first, then
plain task calls. Only the first task of a chain is sent; the rest travel in its
``embed.chain``, reversed (spec §2.7). The client sends a plan with ``send_plan``; the worker
turns the plan of a follow-up or a chord body into messages of its own batch.

Departures from Celery, on purpose: a group of one task is still a group (its result is a
list, also inside a chain); nested groups in a chord header are flattened in order (the body
gets one flat list, ``group_index`` 0..n-1); ``apply_async`` never changes the signature it is
called on (it freezes a copy).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from celeriac.app import context as ctx
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.result import AsyncResult, EagerResult, GroupResult

R = TypeVar("R")

#: signature types applied by the canvas (the others are sent as one task message)
COMPOSITE_TYPES = frozenset({"chain", "group", "chord", "chunks"})
#: options that are bookkeeping of a signature, not ``apply_async`` options
_NOT_OPTIONS = ("chord_size", "task_type", "subtask_type")
#: options an enclosing workflow fixes when it freezes a signature
_FROZEN = ("task_id", "group_id", "group_index", "chord")


@dataclass(slots=True)
class Call:
    """One task message to send: ``apply_async(args, kwargs, **options)`` of task ``name``."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]


@dataclass(slots=True)
class Plan:
    """What applying a signature takes: chord sizes to store, then the calls to send."""

    app: Celeriac
    chord_sizes: list[tuple[str, int]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


def _copy_options(options: dict[str, Any]) -> dict[str, Any]:
    """A copy whose list values (``link``, ``link_error``, ``chain``) are copies too."""
    return {k: list(v) if isinstance(v, list) else v for k, v in options.items()}


def _pop_frozen(options: dict[str, Any]) -> dict[str, Any]:
    return {key: options.pop(key, None) for key in (*_FROZEN, "root_id", "parent_id")}


def _app_of(items: Iterable[Any]) -> Celeriac | None:
    for item in items:
        app = getattr(item, "_app", None)
        if app is not None:
            return app  # type: ignore[no-any-return]
    return None


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
    def name(self) -> str:
        return self.task

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
    def id(self) -> str | None:
        """The task id, once fixed by ``freeze`` (or given as the ``task_id`` option)."""
        value = self.options.get("task_id")
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
        merged_options = {**_copy_options(self.options), **options}
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

    def replace(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Signature[R]:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (those given)."""
        sig = self.clone()
        if args is not None:
            sig["args"] = list(args)
        if kwargs is not None:
            sig["kwargs"] = dict(kwargs)
        if options is not None:
            sig["options"] = dict(options)
        return sig

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

    def on_error(self, errback: dict[str, Any]) -> Signature[R]:
        """``link_error`` returning the signature, for chaining calls."""
        self.link_error(errback)
        return self

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AsyncResult[R]:
        """Fix the task id now (and a group's or chord's ids); returns the result to expect."""
        result: AsyncResult[R] = self._freeze(_id, group_id, chord, root_id, parent_id, group_index)
        return result

    def _freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        from celeriac._internal.ids import new_id
        from celeriac.app.messages import _reply_to
        from celeriac.result import AsyncResult

        opts = self.options
        task_id = opts.get("task_id") or _id or new_id()
        opts["task_id"] = task_id
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        opts.setdefault("reply_to", _reply_to())
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        return AsyncResult(task_id, app=self._app, task_name=self.task)

    def _join_count(self) -> int:
        """How many results this signature reports to a chord whose header it is part of."""
        return 1

    # -- planning (see the module docstring) ----------------------------------------------------
    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        """Add this call to ``plan``; returns its result."""
        from celeriac._internal.ids import new_id
        from celeriac.result import AsyncResult

        new_args, new_kwargs, opts = self._merge(args, kwargs, options)
        for key in _NOT_OPTIONS:
            opts.pop(key, None)
        opts["task_id"] = opts.get("task_id") or new_id()
        plan.calls.append(Call(self.task, new_args, new_kwargs, opts))
        return AsyncResult(opts["task_id"], app=self._app, task_name=self.task)

    # -- calling -------------------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the call (``args`` prepended unless immutable)."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        for key in _NOT_OPTIONS:
            new_options.pop(key, None)
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
        """Run here and now (``NotRegistered`` naming the task when it is unknown here)."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        for key in (*_NOT_OPTIONS, "chord", "chain", "group_index"):
            new_options.pop(key, None)
        return self.type.apply(new_args, new_kwargs, **new_options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        new_args, new_kwargs, _ = self._merge(args, kwargs, {})
        return self.type(*new_args, **new_kwargs)

    def __invert__(self) -> Any:
        """``~sig``: send, wait, return the value (for the shell, as in Celery)."""
        return self.apply_async().get()

    # -- composition ---------------------------------------------------------------------------
    def __or__(self, other: Any) -> Any:
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        if isinstance(other, dict):
            return self | signature(other, app=self._app)
        return NotImplemented

    def __ror__(self, other: Any) -> Any:
        if isinstance(other, dict) and not isinstance(other, Signature):
            return signature(other, app=self._app) | self
        return NotImplemented

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc,override]
        """``sig |= other`` composes (a plain dict's ``|=`` would merge keys)."""
        return self | other

    # -- representation ------------------------------------------------------------------------
    def __repr__(self) -> str:
        args = ", ".join(
            [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        )
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __reduce__(self) -> tuple[Any, ...]:
        return _from_plain_dict, (dict(self),)

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        import copy

        sig: Signature[R] = Signature.from_dict(copy.deepcopy(dict(self), memo), app=self._app)
        return sig

    def __copy__(self) -> Signature[R]:
        return self.clone()

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> Signature[Any]:
        """The signature a dict describes (a composite's class from its ``subtask_type``)."""
        kind = data.get("subtask_type")
        target = _TYPES.get(str(kind)) if kind else None
        if target is not None and target is not cls:
            return target.from_dict(data, app=app)
        return Signature(data, app=app)


def _from_plain_dict(data: dict[str, Any]) -> Signature[Any]:
    return Signature.from_dict(data)


# -- chain -------------------------------------------------------------------------------------
class chain(Signature[Any]):
    """Tasks run one after the other, each result prepended to the next task's args."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], dict):
            tasks = tuple(tasks[0])
        steps = _chain_steps(tasks, app)
        Signature.__init__(
            self,
            "celery.chain",
            (),
            {"tasks": steps},
            options=options,
            subtask_type="chain",
            app=app or _app_of(steps),
        )

    @property
    def tasks(self) -> list[Signature[Any]]:
        tasks: list[Signature[Any]] = self["kwargs"]["tasks"]
        return tasks

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> chain:
        kwargs = data.get("kwargs") or {}
        tasks = [maybe_signature(t, app=app) for t in kwargs.get("tasks") or ()]
        sig = cls(tasks, app=app, **dict(data.get("options") or {}))
        sig["args"] = list(data.get("args") or ())
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> chain:
        sig = chain([t.clone() for t in self.tasks], app=self._app, **_copy_options(self.options))
        sig.options.update(opts)
        sig["immutable"] = self.immutable
        sig["args"] = list(self.args) if self.immutable else [*(args or ()), *self.args]
        return sig

    def _freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """The last step gets the id and the chord membership; parents link the steps."""
        later: Any = None
        last: Any = None
        for number, step in enumerate(reversed(self.tasks)):
            if number == 0:
                result = step._freeze(_id, group_id, chord, root_id, None, group_index)
                last = result
            else:
                result = step._freeze(None, None, None, root_id)
            if later is not None:
                _root_of(later).parent = result
            later = result
        return last

    def _join_count(self) -> int:
        for step in reversed(self.tasks):
            count = step._join_count()
            if count:
                return count
        return 0

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        if not self.tasks:
            raise ValueError("cannot apply an empty chain")
        opts = {**_copy_options(self.options), **options}
        frozen = _pop_frozen(opts)
        links, errbacks = opts.pop("link", None) or [], opts.pop("link_error", None) or []
        after = list(opts.pop("chain", None) or ())
        steps = self.tasks
        for step in steps:
            for errback in errbacks:
                step.link_error(errback)
        for callback in links:
            steps[-1].link(callback)
        result = self._freeze(
            frozen["task_id"], frozen["group_id"], frozen["chord"], frozen["root_id"], None,
            frozen["group_index"],
        )  # fmt: skip
        if frozen["parent_id"]:
            opts["parent_id"] = frozen["parent_id"]
        if frozen["root_id"]:
            opts["root_id"] = frozen["root_id"]
        first_args = (*(() if self.immutable else args), *self.args)
        rest = [*after, *reversed(steps[1:])]
        steps[0]._plan(plan, first_args, kwargs, {**opts, "chain": rest} if rest else opts)
        return result

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        return _apply_async(self, args, kwargs, options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every step here, in order; returns the last result (``parent`` links back)."""
        last: Any = None
        step_args: tuple[Any, ...] = (*(() if self.immutable else (args or ())), *self.args)
        step_kwargs = dict(kwargs or {})
        for step in self.tasks:
            result = step.apply(step_args, step_kwargs, **options)
            _root_of(result).parent = last
            last, step_args, step_kwargs = result, (result.get(),), {}
        return last

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app, **self.options)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app, **self.options)
        if isinstance(other, dict):
            return self | signature(other, app=self._app)
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) if self.tasks else "chain()"


def _chain_steps(tasks: Iterable[Any], app: Celeriac | None) -> list[Signature[Any]]:
    """Steps of a chain: nested chains flattened, a group followed by a step made a chord."""
    steps: list[Signature[Any]] = []
    for item in tasks:
        task = maybe_signature(item, app=app)
        if isinstance(task, chunks):
            task = task.group()
        if isinstance(task, chain) and not task.immutable:
            for inner in _chain_steps(task.tasks, app):
                _append_step(steps, inner)
            continue
        _append_step(steps, task)
    return steps


def _append_step(steps: list[Signature[Any]], task: Signature[Any]) -> None:
    if steps and isinstance(steps[-1], group):
        steps[-1] = chord(steps[-1], task, app=steps[-1]._app)
    elif steps and isinstance(steps[-1], chord) and steps[-1].body is None:
        steps[-1].body = task
    else:
        steps.append(task)


def _root_of(result: Any) -> Any:
    """The first result of a result's parent chain (a chord body's is its header group)."""
    seen: set[int] = set()
    while result.parent is not None and id(result.parent) not in seen:
        seen.add(id(result))
        result = result.parent
    return result


# -- group -------------------------------------------------------------------------------------
class group(Signature[Any]):
    """Tasks run in parallel; the result is a ``GroupResult`` in the group's order."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        items: Iterable[Any] = tasks
        if len(tasks) == 1:
            first = tasks[0]
            items = first.tasks if isinstance(first, group) else first
            if isinstance(first, dict) and not isinstance(first, group):
                items = [first]
        members = [maybe_signature(t, app=app) for t in items]
        Signature.__init__(
            self,
            "celery.group",
            (),
            {"tasks": members},
            options=options,
            subtask_type="group",
            app=app or _app_of(members),
        )

    @property
    def tasks(self) -> list[Signature[Any]]:
        tasks: list[Signature[Any]] = self["kwargs"]["tasks"]
        return tasks

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> group:
        kwargs = data.get("kwargs") or {}
        tasks = [maybe_signature(t, app=app) for t in kwargs.get("tasks") or ()]
        sig = cls(tasks, app=app, **dict(data.get("options") or {}))
        sig["args"] = list(data.get("args") or ())
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> group:
        sig = group([t.clone() for t in self.tasks], app=self._app, **_copy_options(self.options))
        sig.options.update(opts)
        sig["immutable"] = self.immutable
        sig["args"] = list(self.args) if self.immutable else [*(args or ()), *self.args]
        return sig

    def freeze(  # type: ignore[override]
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> GroupResult[Any]:
        result: GroupResult[Any] = self._freeze(
            _id, group_id, chord, root_id, parent_id, group_index
        )
        return result

    def _freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Members report to ``group_id`` (an enclosing chord) or to this group, their
        ``group_index`` counting on from ``group_index`` (0). Both are kept in the group's
        options, so freezing again (with None) changes nothing."""
        from celeriac._internal.ids import new_id
        from celeriac.result import GroupResult

        opts = self.options
        gid = opts.get("task_id") or _id or new_id()
        opts["task_id"] = gid
        if group_id:
            opts["group_id"] = group_id
        if group_index is not None:
            opts["group_index"] = group_index
        join_id = opts.get("group_id") or gid
        index = int(opts.get("group_index") or 0)
        results = []
        for member in self.tasks:
            results.append(member._freeze(None, join_id, chord, root_id, parent_id, index))
            index += member._join_count()
        return GroupResult(gid, results, app=self._app)

    def _join_count(self) -> int:
        return sum(member._join_count() for member in self.tasks)

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        opts = {**_copy_options(self.options), **options}
        after = list(opts.pop("chain", None) or ())
        if after:  # a group with steps after it is a chord (Celery clients upgrade it already)
            body = chain(*reversed(after), app=self._app)
            return chord(self, body, app=self._app)._plan(plan, args, kwargs, opts)
        frozen = _pop_frozen(opts)
        for errback in opts.pop("link_error", None) or ():
            for member in self.tasks:
                member.link_error(errback)
        for callback in opts.pop("link", None) or ():  # as Celery: the first task, immutable
            if self.tasks:
                self.tasks[0].link(maybe_signature(callback, app=self._app).clone(immutable=True))
        result = self._freeze(
            frozen["task_id"], frozen["group_id"], frozen["chord"], frozen["root_id"],
            frozen["parent_id"], frozen["group_index"],
        )  # fmt: skip
        for key in ("root_id", "parent_id"):
            if frozen[key]:
                opts[key] = frozen[key]
        member_args = (*(() if self.immutable else args), *self.args)
        result.results = [m._plan(plan, member_args, kwargs, opts) for m in self.tasks]
        return result

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult[Any]:
        result: GroupResult[Any] = _apply_async(self, args, kwargs, options)
        return result

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult[Any]:
        from celeriac._internal.ids import new_id
        from celeriac.result import GroupResult

        member_args = (*(() if self.immutable else (args or ())), *self.args)
        results = [m.apply(member_args, kwargs, **options) for m in self.tasks]
        return GroupResult(self.id or new_id(), results, app=self._app)

    def __call__(self, *args: Any, **options: Any) -> GroupResult[Any]:
        return self.apply_async(args, **options)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Give the members countdowns ``start``, ``start + step``, ... (at most ``stop``)."""
        countdown = start
        for task in self.tasks:
            task.set(countdown=countdown)
            if stop is None or countdown + step <= stop:
                countdown += step
        return self

    def __or__(self, other: Any) -> Any:
        if isinstance(other, dict):
            return chord(self, maybe_signature(other, app=self._app), app=self._app)
        return NotImplemented

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Signature[Any]]:  # type: ignore[override]
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"


# -- chord -------------------------------------------------------------------------------------
class chord(Signature[Any]):
    """A group (the header) and a body that runs once with the list of the header's results."""

    def __init__(
        self,
        header: Any,
        body: Any = None,
        task: str = "celery.chord",
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        app: Celeriac | None = None,
        **options: Any,
    ) -> None:
        header_group = header if isinstance(header, group) else group(header, app=app)
        body_sig = maybe_signature(body, app=app) if body is not None else None
        Signature.__init__(
            self,
            task,
            args,
            {"kwargs": dict(kwargs or {}), "header": header_group, "body": body_sig},
            options=options,
            subtask_type="chord",
            app=app or header_group._app or (body_sig._app if body_sig is not None else None),
        )

    @property
    def header(self) -> group:
        header: group = self["kwargs"]["header"]
        return header

    @property
    def tasks(self) -> list[Signature[Any]]:
        return self.header.tasks

    @property
    def body(self) -> Signature[Any] | None:
        body: Signature[Any] | None = self["kwargs"].get("body")
        return body

    @body.setter
    def body(self, value: Any) -> None:
        self["kwargs"]["body"] = maybe_signature(value, app=self._app) if value else None

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> chord:
        kwargs = dict(data.get("kwargs") or {})
        header = kwargs.get("header") or []
        if isinstance(header, dict):
            header = maybe_signature(header, app=app)
        sig = cls(
            header,
            kwargs.get("body"),
            str(data.get("task") or "celery.chord"),
            data.get("args"),
            kwargs.get("kwargs"),
            app=app,
            **dict(data.get("options") or {}),
        )
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> chord:
        body = self.body.clone() if self.body is not None else None
        sig = chord(self.header.clone(), body, app=self._app, **_copy_options(self.options))
        sig.options.update(opts)
        sig["immutable"] = self.immutable
        sig["args"] = list(self.args) if self.immutable else [*(args or ()), *self.args]
        return sig

    def _required_body(self) -> Signature[Any]:
        if self.body is None:
            raise ValueError(
                f"chord of {len(self.tasks)} task(s) has no body: call chord(header)(body)"
            )
        return self.body

    def _freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """The body first (it reports to an enclosing chord, if any), then the header, whose
        tasks carry the frozen body in ``embed.chord``."""
        from celeriac._internal.ids import new_id

        body = self._required_body()
        header = self.header
        gid = header.options.get("task_id") or new_id()
        header.options["task_id"] = gid
        body_result = body._freeze(_id, group_id or gid, chord, root_id, None, group_index)
        header_result = header._freeze(gid, None, body, root_id, parent_id, 0)
        _root_of(body_result).parent = header_result
        return body_result

    def _join_count(self) -> int:
        return self._required_body()._join_count()

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        body = self._required_body()
        app = plan.app
        if app.backend is None:
            raise ImproperlyConfigured(
                f"A chord needs a result backend to join its header: chord body {body.task!r} "
                "cannot run. Set result_backend (e.g. 'redis://localhost/0' or 'sqlite://')."
            )
        opts = {**_copy_options(self.options), **options}
        frozen = _pop_frozen(opts)
        for key in ("link", "link_error"):
            for sig in opts.pop(key, None) or ():
                body.options.setdefault(key, []).append(sig)
        after = list(opts.pop("chain", None) or ())
        if after:  # steps after a chord continue from its body
            body.options["chain"] = [*after, *(body.options.get("chain") or ())]
        for key, value in opts.items():  # as Celery: the chord's options apply to its body too
            if key not in ("priority", "root_id", "parent_id"):
                body.options.setdefault(key, value)
        result = self._freeze(
            frozen["task_id"], frozen["group_id"], frozen["chord"], frozen["root_id"],
            frozen["parent_id"], frozen["group_index"],
        )  # fmt: skip
        header = self.header
        size = header._join_count()
        header_args = (*(() if self.immutable else args), *self.args)
        if size:
            plan.chord_sizes.append((str(header.id), size))
            header_opts = {k: v for k, v in opts.items() if k not in _FROZEN}
            header._plan(plan, header_args, {**self.kwargs.get("kwargs", {}), **kwargs}, header_opts)
        else:  # nothing will ever join: the body runs now, with no results
            body._plan(plan, ([],), {}, {})
        return result

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        kwargs = dict(kwargs or {})
        body = kwargs.pop("body", None)
        sig = self
        if body is not None:
            sig = self.clone()
            sig.body = body
        return _apply_async(sig, args, kwargs, options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        propagate: bool = True,
        body: Any = None,
        **options: Any,
    ) -> Any:
        """The header here and now, then the body with its results."""
        callback = maybe_signature(body, app=self._app) if body else self._required_body()
        header_args = (*(() if self.immutable else (args or ())), *self.args)
        header_result = self.header.apply(header_args, kwargs)
        values = header_result.get(propagate=propagate)
        result = callback.apply((values,), **options)
        _root_of(result).parent = header_result
        return result

    def __call__(self, body: Any = None, **options: Any) -> Any:
        return self.apply_async((), {"body": body} if body is not None else {}, **options)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, dict):
            sig = self.clone()
            other = maybe_signature(other, app=self._app)
            sig.body = other if sig.body is None else sig.body | other
            return sig
        return NotImplemented

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


# -- map, starmap, chunks ----------------------------------------------------------------------
def _items(it: Iterable[Any]) -> list[Any]:
    """The arguments of a map as a list (``range`` items as lists, so JSON can carry them)."""
    return [list(item) if isinstance(item, range) else item for item in it]


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
        return type(self)(kw["task"], kw["it"], app=self._app, **{**self.options, **opts})

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
    """``task.chunks(it, n)``: ``it`` cut in parts of ``n``, one ``starmap`` task per part."""

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
        self._group: group | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> chunks:
        kw = data.get("kwargs") or {}
        options = dict(data.get("options") or {})
        return cls(kw["task"], kw.get("it") or (), kw.get("n") or 1, app=app, **options)

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> chunks:
        kw = self["kwargs"]
        return chunks(kw["task"], kw["it"], kw["n"], app=self._app, **{**self.options, **opts})

    def group(self) -> group:
        """The group of ``starmap`` tasks, one per chunk."""
        kw = self["kwargs"]
        items, size = list(kw["it"]), max(1, int(kw["n"]))
        parts = (items[i : i + size] for i in range(0, len(items), size))
        return group(
            [xstarmap(kw["task"], part, app=self._app) for part in parts],
            app=self._app,
            **_copy_options(self.options),
        )

    def _as_group(self) -> group:
        if self._group is None:
            self._group = self.group()
        return self._group

    def _freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        return self._as_group()._freeze(_id, group_id, chord, root_id, parent_id, group_index)

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

    def __call__(self, **options: Any) -> GroupResult[Any]:  # type: ignore[override]
        return self.apply_async(**options)

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"{kw['task'].task}.chunks({len(kw['it'])} items, {kw['n']})"


_TYPES: dict[str, type[Signature[Any]]] = {
    "chain": chain,
    "group": group,
    "chord": chord,
    "chunks": chunks,
    "xmap": xmap,
    "xstarmap": xstarmap,
}


# -- applying ----------------------------------------------------------------------------------
def _apply_async(
    sig: Signature[Any],
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
) -> Any:
    """``apply_async`` of a composite: eager when ``task_always_eager``, else a frozen copy's
    plan is sent (all or nothing: arguments are checked before anything is sent)."""
    app = sig.app
    if app.conf.task_always_eager:
        return sig.apply(args, kwargs, **options)
    add_to_parent = options.pop("add_to_parent", True)
    plan = Plan(app)
    result = sig.clone()._plan(plan, tuple(args or ()), dict(kwargs or {}), options)
    send_plan(plan)
    current = ctx.top()
    if add_to_parent and current is not None and not current[1].called_directly:
        current[1].children.append(result)
    return result


def send_plan(plan: Plan) -> None:
    """Store the plan's chord sizes, then publish its calls (signals as ``send_task``)."""
    from celeriac import signals

    app = plan.app
    if plan.chord_sizes:
        backend = app.backend
        assert backend is not None  # checked when the chord was planned
        for group_id, size in plan.chord_sizes:
            backend.set_chord_size(group_id, size)
    items = []
    for call in plan.calls:
        task = app.tasks.get(call.name) if call.name in app.tasks else None
        if task is not None and task.typing:
            task.check_arguments(call.args, call.kwargs)
        options = {k: v for k, v in call.options.items() if k not in ("retry", "retry_policy")}
        publication = app.prepare(call.name, call.args, call.kwargs, task=task, **options)
        raw = app.encode(publication.message)
        items.append((call.name, publication.queue, raw, publication.eta))
    for name, queue, raw, _ in items:
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
    for start in range(0, len(items), 1000):
        app.transport.publish_many([(q, raw, eta) for _, q, raw, eta in items[start : start + 1000]])
    for name, queue, raw, _ in items:
        signals.after_task_publish.send(
            sender=name, body=raw.body, headers=raw.headers, exchange="", routing_key=queue
        )


def plan_signature(
    app: Celeriac,
    sig: dict[str, Any],
    args: Sequence[Any] = (),
    options: dict[str, Any] | None = None,
) -> tuple[Plan, Any]:
    """The plan (and result) of applying the signature dict ``sig`` with ``args`` prepended,
    for a worker sending a follow-up or a chord body."""
    plan = Plan(app)
    result = maybe_signature(sig, app=app)._plan(plan, tuple(args), {}, dict(options or {}))
    return plan, result


# -- constructors ------------------------------------------------------------------------------
def signature(
    varies: str | dict[str, Any] | Signature[Any], *args: Any, **kwargs: Any
) -> Signature[Any]:
    """Celery's ``signature()``: from a task name (with args) or a signature dict."""
    app = kwargs.pop("app", None)
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, dict):
        return Signature.from_dict(varies, app=app)
    sig: Signature[Any] = Signature(varies, *args, **kwargs)
    sig._app = app
    return sig


subtask = signature


@overload
def maybe_signature(value: None, app: Celeriac | None = None) -> None: ...


@overload
def maybe_signature(value: list[Any], app: Celeriac | None = None) -> list[Signature[Any]]: ...


@overload
def maybe_signature(value: dict[str, Any], app: Celeriac | None = None) -> Signature[Any]: ...


def maybe_signature(value: Any, app: Celeriac | None = None) -> Any:
    """``value`` as a ``Signature`` (dicts are converted, composites by ``subtask_type``;
    signatures are returned as they are); a list gives a list; None stays None."""
    if value is None:
        return None
    if isinstance(value, list):
        return [maybe_signature(item, app=app) for item in value]
    if isinstance(value, Signature):
        if app is not None and value._app is None:
            value._app = app
        return value
    if isinstance(value, dict):
        return Signature.from_dict(value, app=app)
    raise TypeError(f"not a signature: {value!r}")


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
        yield from leaves(header) if isinstance(header, dict) else itertools.chain.from_iterable(
            leaves(t) for t in header
        )
        if kwargs.get("body"):
            yield from leaves(kwargs["body"])
    else:
        yield sig


__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
