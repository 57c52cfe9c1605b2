"""``Signature``: one task call as data, in Celery's dict form, and what every signature can do.

The base of the canvas: fields, partial arguments (``clone``, ``_merge``), options (``set``,
``link``, ``link_error``), ``freeze``, calling (``apply_async``, ``delay``, ``apply``, ``()``,
``~``), composition with ``|``, and ``signature()`` / ``maybe_signature()``, which build the
right class from a dict's ``subtask_type``. The composite classes live in
``celeriac.canvas.primitives`` and ``celeriac.canvas.maps``; sending in
``celeriac.canvas.sending``.

Internals every class implements (see the package docstring): ``_freeze(_id, Membership)``
fixes ids and returns the result to expect; ``_join_count()`` is how many results it reports
to an enclosing chord; ``_plan(plan, args, kwargs, options)`` adds its task calls to a
``Plan`` and returns its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from celeriac._internal.ids import new_id
from celeriac.app.messages import _reply_to
from celeriac.result import AsyncResult

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.result import EagerResult

R = TypeVar("R")

#: options that are bookkeeping of a signature, not ``apply_async`` options
NOT_OPTIONS = ("chord_size", "task_type", "subtask_type")
#: options an enclosing workflow fixes when it freezes a signature
FROZEN_OPTIONS = ("task_id", "group_id", "group_index", "chord", "root_id", "parent_id")
#: subtask_type -> class, filled by the modules that define the composites
TYPES: dict[str, type[Signature[Any]]] = {}


@dataclass(frozen=True, slots=True)
class Membership:
    """Where a signature being frozen belongs: the group (or chord header) it reports to and
    its place there, the chord body it completes, the workflow's root and parent ids."""

    group_id: str | None = None
    chord: dict[str, Any] | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_index: int | None = None


@dataclass(slots=True)
class Call:
    """One task message to send: ``apply_async(args, kwargs, **options)`` of task ``name``."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]


@dataclass(slots=True)
class Plan:
    """What applying a signature takes: chord sizes to store first, then calls to send."""

    app: Celeriac
    chord_sizes: list[tuple[str, int]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


def copy_options(options: dict[str, Any]) -> dict[str, Any]:
    """A copy whose list values (``link``, ``link_error``, ``chain``) are copies too."""
    if not options:
        return {}
    for value in options.values():
        if isinstance(value, list):
            return {k: list(v) if isinstance(v, list) else v for k, v in options.items()}
    return dict(options)  # no list in it (the common case): a plain copy, at C speed


def pop_frozen(options: dict[str, Any]) -> tuple[str | None, Membership]:
    """Take the frozen ids out of ``options``: (task id, membership)."""
    found = {key: options.pop(key, None) for key in FROZEN_OPTIONS}
    task_id = found.pop("task_id")
    return task_id, Membership(**found)


def freeze_options(
    opts: dict[str, Any],
    _id: str | None,
    group_id: str | None,
    at: Membership,
    group_index: int | None,
) -> str:
    """A single signature's ``freeze`` in its options ``opts``: its task id (kept if fixed)
    and what ``at`` says, with ``group_id`` and ``group_index`` given apart (a group freezing
    its members passes its own and a counter, with one ``at`` for all); returns the id."""
    task_id: str = opts.get("task_id") or _id or new_id()
    opts["task_id"] = task_id
    if at.root_id:
        opts["root_id"] = at.root_id
    if at.parent_id:
        opts["parent_id"] = at.parent_id
    if "reply_to" not in opts:
        opts["reply_to"] = _reply_to()
    if group_id and "group_id" not in opts:
        opts["group_id"] = group_id
    if at.chord:
        opts["chord"] = at.chord
    if group_index is not None:
        opts["group_index"] = group_index
    return task_id


def root_of(result: Any) -> Any:
    """The first result of a result's ``parent`` chain (a chord body's: its header group)."""
    seen: set[int] = set()
    while result.parent is not None and id(result.parent) not in seen:
        seen.add(id(result))
        result = result.parent
    return result


def partial_args(sig: Signature[Any], args: Sequence[Any] | None) -> tuple[Any, ...]:
    """``args`` prepended to ``sig``'s own (not for an immutable signature)."""
    return (*(() if sig.immutable else (args or ())), *sig.args)


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
        self,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        own: dict[str, Any] | None = None,
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """(args, kwargs, options) of a call: ``args`` prepended (unless immutable), the rest
        merged over the signature's own (``own``: a copy of its options already made)."""
        if own is None:
            merged_options = {**copy_options(self.options), **options}
        else:  # the caller's own copy: updated in place, not copied again
            merged_options = own
            if options:
                merged_options.update(options)
        get = self.get
        own_args, own_kwargs = get("args") or (), get("kwargs") or {}
        if get("immutable"):
            return tuple(own_args), dict(own_kwargs), merged_options
        new_kwargs = {**own_kwargs, **kwargs} if kwargs else dict(own_kwargs)
        return (*(args or ()), *own_args), new_kwargs, merged_options

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature[R]:
        """A copy with ``args`` prepended, ``kwargs`` and options merged."""
        if not args and not kwargs and not opts:  # a plain copy (a group copies every member)
            return self._copy()
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

    def _copy(self) -> Signature[R]:
        """``clone()`` with nothing to merge: the same fields, list options copied."""
        get = self.get
        subtask_type = get("subtask_type")
        return Signature.made(
            self._app,
            str(self["task"]),
            list(get("args") or ()),
            dict(get("kwargs") or {}),
            copy_options(get("options") or {}),
            str(subtask_type) if subtask_type is not None else None,
            bool(get("immutable")),
        )

    @staticmethod
    def made(
        app: Celeriac | None,
        task: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        subtask_type: str | None = None,
        immutable: bool = False,
    ) -> Signature[Any]:
        """A plain signature of these fields, taken as they are (no copies, no checks): for
        callers that made them fresh (``_copy``, ``Task.signature``) on hot paths."""
        sig: Signature[Any] = Signature.__new__(Signature)
        sig._app = app
        dict.__init__(
            sig,
            task=task,
            args=args,
            kwargs=kwargs,
            options=options,
            subtask_type=subtask_type,
            immutable=immutable,
        )
        return sig

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
        """Fix the task id now (a composite's ids too); returns the result to expect."""
        membership = Membership(group_id, chord, root_id, parent_id, group_index)
        result: AsyncResult[R] = self._freeze(_id, membership)
        return result

    def _freeze(self, _id: str | None, at: Membership) -> Any:
        """Celery's ``freeze``: ids already fixed are kept, so freezing again changes nothing."""
        task_id = freeze_options(self.options, _id, at.group_id, at, at.group_index)
        return AsyncResult(task_id, app=self._app, task_name=self.task)

    def _join_count(self) -> int:
        """How many results this signature reports to a chord whose header it is part of."""
        return 1

    def _plans_in_place(self, options: dict[str, Any]) -> bool:
        """Whether ``_plan`` with these options leaves this signature (and its parts) as it
        is, so that ``apply_async`` need not plan a copy. A single task's plan copies its
        options; composites that freeze their parts say no (a plain group says yes)."""
        return type(self) is Signature

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        """Add this call to ``plan``; returns its result."""
        call = self._call(args, kwargs, options)
        plan.calls.append(call)
        return AsyncResult(call.options["task_id"], app=self._app, task_name=self.task)

    def _call(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        own: dict[str, Any] | None = None,
    ) -> Call:
        """The ``Call`` that ``_plan`` adds (``args`` prepended, options merged)."""
        new_args, new_kwargs, opts = self._merge(args, kwargs, options, own)
        if opts:
            for key in NOT_OPTIONS:
                opts.pop(key, None)
        if not opts.get("task_id"):
            opts["task_id"] = new_id()
        return Call(self.task, new_args, new_kwargs, opts)

    # -- calling -------------------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the call (``args`` prepended unless immutable)."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        for key in NOT_OPTIONS:
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
        for key in (*NOT_OPTIONS, "chord", "chain", "group_index"):
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
        from celeriac.canvas.primitives import chain

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

    def __ior__(self, other: Any) -> Any:
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
        target = TYPES.get(str(kind)) if kind else None
        if target is not None and target is not cls:
            return target.from_dict(data, app=app)
        return Signature(data, app=app)


def _from_plain_dict(data: dict[str, Any]) -> Signature[Any]:
    return Signature.from_dict(data)


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
