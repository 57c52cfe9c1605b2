"""``chain``, ``group`` and ``chord``: the composite signatures (see the package docstring).

Each keeps its parts in ``kwargs`` as Celery does, so its dict form is Celery's, and implements
``_freeze`` (ids and chord membership, parent links between results), ``_join_count`` and
``_plan`` (the calls to send), ``apply`` (eager) and the ``|`` rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import Self

from celeriac._internal.ids import new_id
from celeriac.canvas.base import (
    TYPES,
    Membership,
    Plan,
    Signature,
    copy_options,
    freeze_options,
    maybe_signature,
    partial_args,
    pop_frozen,
    root_of,
    signature,
)
from celeriac.canvas.sending import apply_composite
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.result import GroupResult


def _app_of(items: Iterable[Any]) -> Celeriac | None:
    for item in items:
        app = getattr(item, "_app", None)
        if app is not None:
            return app  # type: ignore[no-any-return]
    return None


def _tasks_from(data: dict[str, Any], app: Celeriac | None) -> list[Signature[Any]]:
    return [maybe_signature(t, app=app) for t in (data.get("kwargs") or {}).get("tasks") or ()]


def _part(item: Any, app: Celeriac | None) -> Signature[Any]:
    """A part of a composite: a copy of its own (one signature object used twice in a workflow
    must not share ids), a ``chunks`` as its group (its ids are fixed once)."""
    sig = maybe_signature(item, app=app)
    if type(sig) is Signature:  # the common case: no class to look up
        return sig._copy()
    from celeriac.canvas.maps import chunks

    return sig.group() if isinstance(sig, chunks) else sig.clone()


def _signatures(value: Any) -> list[Any]:
    """A ``link``/``link_error`` option as a list: one signature (a dict) or several."""
    if not value:
        return []
    return [value] if isinstance(value, dict) else list(value)


def _finish_copy(sig: Signature[Any], source: Signature[Any], args: Any, opts: Any) -> None:
    """A clone's ``immutable``, partial ``args`` and extra options, from ``source``."""
    sig.options.update(opts)
    sig["immutable"] = source.immutable
    sig["args"] = list(partial_args(source, args))


# -- chain and group share their parts' handling ---------------------------------------------
class _TaskList(Signature[Any]):
    """A signature whose parts are ``kwargs["tasks"]``: ``chain`` and ``group``."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        raise NotImplementedError  # pragma: no cover - subclasses build themselves

    @property
    def tasks(self) -> list[Signature[Any]]:
        tasks: list[Signature[Any]] = self["kwargs"]["tasks"]
        return tasks

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> Self:
        sig = cls(_tasks_from(data, app), app=app, **dict(data.get("options") or {}))
        sig["args"] = list(data.get("args") or ())
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Self:
        sig = type(self)(self.tasks, app=self._app, **copy_options(self.options))  # copies parts
        _finish_copy(sig, self, args, opts)
        return sig


# -- chain -------------------------------------------------------------------------------------
class chain(_TaskList):
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

    def _freeze(self, _id: str | None, at: Membership) -> Any:
        """The last step gets the id and the chord membership; ``parent`` links the steps."""
        later: Any = None
        last: Any = None
        for number, step in enumerate(reversed(self.tasks)):
            if number == 0:
                last = result = step._freeze(
                    _id, Membership(at.group_id, at.chord, at.root_id, None, at.group_index)
                )
            else:
                result = step._freeze(None, Membership(root_id=at.root_id))
            if later is not None:
                root_of(later).parent = result
            later = result
        return last

    def _join_count(self) -> int:
        for step in reversed(self.tasks):
            count = int(step._join_count())
            if count:
                return count
        return 0

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        """Only the first step is sent; the others travel in its ``embed.chain``, reversed."""
        steps = self.tasks
        if not steps:
            raise ValueError("cannot apply an empty chain")
        opts = {**copy_options(self.options), **options}
        task_id, at = pop_frozen(opts)
        for errback in _signatures(opts.pop("link_error", None)):
            for step in steps:
                step.link_error(errback)
        for callback in _signatures(opts.pop("link", None)):
            steps[-1].link(callback)
        after = list(opts.pop("chain", None) or ())
        result = self._freeze(task_id, at)
        if at.parent_id:
            opts["parent_id"] = at.parent_id
        if at.root_id:
            opts["root_id"] = at.root_id
        rest = [*after, *reversed(steps[1:])]
        first_options = {**opts, "chain": rest} if rest else opts
        steps[0]._plan(plan, partial_args(self, args), kwargs, first_options)
        return result

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        return apply_composite(self, args, kwargs, options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every step here, in order; returns the last result (``parent`` links back)."""
        last: Any = None
        step_args, step_kwargs = partial_args(self, args), dict(kwargs or {})
        for step in self.tasks:
            result = step.apply(step_args, step_kwargs, **options)
            root_of(result).parent = last
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
        task = _part(item, app)
        if isinstance(task, chain) and not task.immutable:
            for inner in _chain_steps(task.tasks, app):
                _append_step(steps, inner)
            continue
        _append_step(steps, task)
    return steps


def _append_step(steps: list[Signature[Any]], task: Signature[Any]) -> None:
    last = steps[-1] if steps else None
    if isinstance(last, group):
        steps[-1] = chord(last, task, app=last._app)
    elif isinstance(last, chord) and last.body is None:
        last.body = task
    else:
        steps.append(task)


# -- group -------------------------------------------------------------------------------------
class group(_TaskList):
    """Tasks run in parallel; the result is a ``GroupResult`` in the group's order."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        items: Iterable[Any] = tasks
        if len(tasks) == 1:
            first = tasks[0]
            items = first.tasks if isinstance(first, group) else first
            if isinstance(first, dict) and not isinstance(first, group):
                items = [first]
        members = [_part(t, app) for t in items]
        Signature.__init__(
            self,
            "celery.group",
            (),
            {"tasks": members},
            options=options,
            subtask_type="group",
            app=app or _app_of(members),
        )

    def freeze(  # type: ignore[override]
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: dict[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> GroupResult[Any]:
        at = Membership(group_id, chord, root_id, parent_id, group_index)
        result: GroupResult[Any] = self._freeze(_id, at)
        return result

    def _freeze(self, _id: str | None, at: Membership) -> Any:
        """Members report to ``at.group_id`` (an enclosing chord) or to this group, their
        ``group_index`` counting on from ``at.group_index`` (0). Both are kept in the group's
        options, so freezing again changes nothing."""
        from celeriac.result import GroupResult

        gid, join_id, index = self._freeze_own(_id, at)
        results = []
        for member in self.tasks:
            where = Membership(join_id, at.chord, at.root_id, at.parent_id, index)
            results.append(member._freeze(None, where))
            index += member._join_count()
        return GroupResult(gid, results, app=self._app)

    def _freeze_own(
        self, _id: str | None, at: Membership, opts: dict[str, Any] | None = None
    ) -> tuple[str, str, int]:
        """The group's own part of ``_freeze``: (its id, the id its members report to, the
        first member's ``group_index``), written in its options (or in ``opts``)."""

        opts = self.options if opts is None else opts
        gid = opts.get("task_id") or _id or new_id()
        opts["task_id"] = gid
        if at.group_id:
            opts["group_id"] = at.group_id
        if at.group_index is not None:
            opts["group_index"] = at.group_index
        return gid, opts.get("group_id") or gid, int(opts.get("group_index") or 0)

    def _plan_plain(
        self,
        plan: Plan,
        task_id: str | None,
        at: Membership,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> GroupResult[Any]:
        """``_freeze`` then ``_plan_members`` for a group of single task signatures (a bulk
        send), in one pass per member: no ``Membership`` and no result made twice. The ids
        are written in copies of the options: the group and its members are left as they are
        (``_plans_in_place``)."""
        from celeriac.result import AsyncResult, GroupResult

        gid, join_id, index = self._freeze_own(task_id, at, dict(self.options))
        member_args = partial_args(self, args)
        app, calls = self._app, plan.calls
        results: list[AsyncResult[Any]] = []
        for member in self.tasks:
            own = copy_options(member.get("options") or {})
            freeze_options(own, None, join_id, at, index)
            call = member._call(member_args, kwargs, options, own)
            calls.append(call)
            results.append(AsyncResult(call.options["task_id"], app=app, task_name=call.name))
            index += 1
        return GroupResult(gid, results, app=app)

    def _join_count(self) -> int:
        return sum(member._join_count() for member in self.tasks)

    def _plans_in_place(self, options: dict[str, Any]) -> bool:
        """A group of single tasks with no ``link``, ``link_error`` or steps after it is
        planned by ``_plan_plain``, which changes nothing in place."""
        for key in ("link", "link_error", "chain"):
            if self.options.get(key) or options.get(key):
                return False
        return all(type(member) is Signature for member in self.tasks)

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        opts = {**copy_options(self.options), **options}
        after = list(opts.pop("chain", None) or ())
        if after:  # a group with steps after it is a chord (Celery clients upgrade it already)
            body = chain(*reversed(after), app=self._app)
            return chord(self, body, app=self._app)._plan(plan, args, kwargs, opts)
        task_id, at = pop_frozen(opts)
        for errback in _signatures(opts.pop("link_error", None)):
            for member in self.tasks:
                member.link_error(errback)
        for callback in _signatures(opts.pop("link", None)):  # as Celery: the first task, immutable
            if self.tasks:
                self.tasks[0].link(maybe_signature(callback, app=self._app).clone(immutable=True))
        for key in ("root_id", "parent_id"):
            if getattr(at, key):
                opts[key] = getattr(at, key)
        if all(type(member) is Signature for member in self.tasks):
            return self._plan_plain(plan, task_id, at, args, kwargs, opts)
        result = self._freeze(task_id, at)
        return self._plan_members(plan, result, args, kwargs, opts)

    def _plan_members(
        self,
        plan: Plan,
        result: GroupResult[Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> GroupResult[Any]:
        """The members' calls, once the group is frozen (``result``)."""
        member_args = partial_args(self, args)
        result.results = [m._plan(plan, member_args, kwargs, options) for m in self.tasks]
        return result

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult[Any]:
        result: GroupResult[Any] = apply_composite(self, args, kwargs, options)
        return result

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult[Any]:
        from celeriac.result import GroupResult

        member_args = partial_args(self, args)
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
        header_group = header.clone() if isinstance(header, group) else group(header, app=app)
        body_sig = _part(body, app) if body is not None else None
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
        self["kwargs"]["body"] = _part(value, self._app) if value else None

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> chord:
        kwargs = dict(data.get("kwargs") or {})
        header = kwargs.get("header") or []
        if isinstance(header, dict):
            header = maybe_signature(header, app=app)
        task = str(data.get("task") or "celery.chord")
        options = dict(data.get("options") or {})
        body, extra = kwargs.get("body"), kwargs.get("kwargs")
        sig = cls(header, body, task, data.get("args"), extra, app=app, **options)
        sig["immutable"] = bool(data.get("immutable"))
        return sig

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> chord:
        options = copy_options(self.options)
        sig = chord(self.header, self.body, app=self._app, **options)  # copies the parts
        _finish_copy(sig, self, args, opts)
        return sig

    def _required_body(self) -> Signature[Any]:
        if self.body is None:
            raise ValueError(
                f"chord of {len(self.tasks)} task(s) has no body: call chord(header)(body)"
            )
        return self.body

    def _freeze(self, _id: str | None, at: Membership) -> Any:
        """The body first (it reports to an enclosing chord, if any), then the header, whose
        tasks carry the frozen body in ``embed.chord``."""
        return self._freeze_parts(_id, at)[0]

    def _freeze_parts(self, _id: str | None, at: Membership) -> tuple[Any, GroupResult[Any]]:
        """(the body's result, the header's)."""

        body = self._required_body()
        header = self.header
        gid = header.options.get("task_id") or new_id()
        header.options["task_id"] = gid
        body_at = Membership(at.group_id or gid, at.chord, at.root_id, None, at.group_index)
        body_result = body._freeze(_id, body_at)
        header_result = header._freeze(gid, Membership(None, body, at.root_id, at.parent_id, 0))
        root_of(body_result).parent = header_result
        return body_result, header_result

    def _join_count(self) -> int:
        return int(self._required_body()._join_count())

    def _plan(
        self, plan: Plan, args: Sequence[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        body = self._required_body()
        if plan.app.backend is None:
            raise ImproperlyConfigured(
                f"A chord needs a result backend to join its header: chord body {body.task!r} "
                "cannot run. Set result_backend (e.g. 'redis://localhost/0' or 'sqlite://')."
            )
        opts = {**copy_options(self.options), **options}
        task_id, at = pop_frozen(opts)
        self._to_body(body, opts)
        result, header_result = self._freeze_parts(task_id, at)
        header = self.header
        size = header._join_count()
        if not size:  # nothing will ever join: the body runs now, with no results
            body._plan(plan, ([],), {}, {})
            return result
        plan.chord_sizes.append((str(header.id), size))
        header_kwargs = {**self.kwargs.get("kwargs", {}), **kwargs}
        header._plan_members(plan, header_result, partial_args(self, args), header_kwargs, opts)
        return result

    @staticmethod
    def _to_body(body: Signature[Any], opts: dict[str, Any]) -> None:
        """Callbacks, errbacks and the steps after the chord go to its body; so do its other
        options (as in Celery), which also apply to the header."""
        for key in ("link", "link_error"):
            for sig in opts.pop(key, None) or ():
                body.options.setdefault(key, []).append(sig)
        after = list(opts.pop("chain", None) or ())
        if after:
            body.options["chain"] = [*after, *(body.options.get("chain") or ())]
        for key, value in opts.items():
            if key != "priority":
                body.options.setdefault(key, value)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        kwargs = dict(kwargs or {})
        body = kwargs.pop("body", None)
        if body is None:
            return apply_composite(self, args, kwargs, options)
        sig = self.clone()  # the caller's chord keeps its body: send a copy, not a copy's copy
        sig.body = body
        return apply_composite(sig, args, kwargs, options, private=True)

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
        header_result = self.header.apply(partial_args(self, args), kwargs)
        values = header_result.get(propagate=propagate)
        result = callback.apply((values,), **options)
        root_of(result).parent = header_result
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


TYPES.update(chain=chain, group=group, chord=chord)
