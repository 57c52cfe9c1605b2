"""``Task[P, R]``: a registered function with Celery's options, calling forms and ``self.request``.

``@app.task`` wraps a ``def`` or ``async def`` function in a ``Task`` instance (an instance of the
``base=`` class; no classes are built at run time). Calling the task runs it here; ``delay`` /
``apply_async`` send a message and return ``AsyncResult[R]``; ``apply`` runs it eagerly with the
worker's semantics (``celeriac.app.trace``). Options left unset fall back to the app's settings
(``acks_late`` -> ``task_acks_late`` ...) when read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from celeriac import states
from celeriac._internal.ids import new_id
from celeriac._internal.timeutils import make_aware, to_seconds, utcnow
from celeriac.app import context as ctx
from celeriac.exceptions import MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    import inspect

    from celeriac.app.base import Celeriac
    from celeriac.canvas import Signature, xmap, xstarmap
    from celeriac.canvas import chunks as Chunks
    from celeriac.result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect  # here, not at the top: ``import celeriac`` stays cheap

    return inspect.iscoroutinefunction(fn)


class _Shape:
    """A precompiled ``Signature.bind`` check: ``fits`` answers True for calls that surely
    bind (the common case, a few tuple/dict operations); anything else goes to ``bind``."""

    def __init__(self, sig: inspect.Signature) -> None:
        import inspect

        kind = inspect.Parameter
        self.sig = sig
        params = list(sig.parameters.values())
        keyword = (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)
        self.simple = all(p.kind != kind.POSITIONAL_ONLY for p in params)
        self.positional = tuple(p.name for p in params if p.kind == kind.POSITIONAL_OR_KEYWORD)
        self.var_args = any(p.kind == kind.VAR_POSITIONAL for p in params)
        self.var_kwargs = any(p.kind == kind.VAR_KEYWORD for p in params)
        self.keywords = frozenset(p.name for p in params if p.kind in keyword)
        self.required = tuple(
            (p.name, self.positional.index(p.name) if p.kind == keyword[0] else len(params))
            for p in params
            if p.kind in keyword and p.default is p.empty
        )

    def fits(self, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        if not self.simple:
            return False
        count = len(args)
        if count > len(self.positional) and not self.var_args:
            return False
        for key in kwargs:
            if key in self.keywords:
                if key in self.positional[:count]:
                    return False  # given twice
            elif not self.var_kwargs:
                return False
        return all(index < count or name in kwargs for name, index in self.required)


class _FromConf(Generic[T]):
    """A task option that falls back to an app setting when the task does not set it."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_opt_{name}"

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _FromConf[T]: ...

    @overload
    def __get__(self, obj: Task[Any, Any], objtype: type | None = None) -> T: ...

    def __get__(self, obj: Task[Any, Any] | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__.get(self.attr)
        if value is None:
            return obj.app.conf[self.setting]
        return value

    def __set__(self, obj: Task[Any, Any], value: T | None) -> None:
        obj.__dict__[self.attr] = value


def exponential_backoff(
    factor: float, retries: int, maximum: float, full_jitter: bool = False
) -> float:
    """Celery's ``get_exponential_backoff_interval``: ``factor * 2**retries``, capped, jittered."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(int(countdown) + 1)
    return max(0.0, float(countdown))


def retry_eta(retry: Retry) -> datetime:
    """When a ``Retry`` asks to run again, as an aware UTC datetime."""
    when = retry.when
    if isinstance(when, datetime):
        return make_aware(when)
    if isinstance(when, timedelta):
        return utcnow() + when
    if isinstance(when, (int, float)):
        return utcnow() + timedelta(seconds=float(when))
    return utcnow()


class Task(Generic[P, R]):
    """A task: Celery's options as attributes, Celery's calling API as methods."""

    # -- options (class attributes are defaults; a ``base=`` subclass may override them) -------
    name: str = ""
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    rate_limit: str | None = None
    queue: str | None = None
    priority: int | None = None
    expires: float | datetime | None = None
    serializer: str | None = None
    compression: str | None = None
    shadow_name: str | None = None
    reject_on_worker_lost: bool | None = None
    acks_late = _FromConf[bool]("task_acks_late")
    acks_on_failure_or_timeout = _FromConf[bool]("task_acks_on_failure_or_timeout")
    ignore_result = _FromConf[bool]("task_ignore_result")
    track_started = _FromConf[bool]("task_track_started")
    time_limit = _FromConf[float]("task_time_limit")
    soft_time_limit = _FromConf[float]("task_soft_time_limit")
    store_errors_even_if_ignored = _FromConf[bool]("task_store_errors_even_if_ignored")

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        app: Celeriac | None = None,
        name: str | None = None,
        bind: bool = False,
        **options: Any,
    ) -> None:
        self._app = app
        self.__wrapped__ = fn
        self.bind = bind
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self.is_async = _is_coroutine_function(fn)
        for key, value in options.items():
            if key == "shadow":
                key = "shadow_name"
            if not hasattr(type(self), key):
                from celeriac.exceptions import ImproperlyConfigured

                raise ImproperlyConfigured(f"Unknown task option {key!r} for task {self.name!r}")
            setattr(self, key, value)
        self.run: Callable[..., Any] = fn.__get__(self) if bind else fn
        self._shape: _Shape | None = None

    # -- the app -------------------------------------------------------------------------------
    @property
    def app(self) -> Celeriac:
        if self._app is not None:
            return self._app
        from celeriac.app.base import get_current_app

        return get_current_app()

    # -- calling -------------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the task here, now (an ``async def`` task returns its coroutine)."""
        request = ctx.Context(id=None, task=self.name, args=args, kwargs=kwargs)
        token = ctx.push(self, request)
        try:
            return self.run(*args, **kwargs)
        finally:
            ctx.pop(token)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; ``apply_async`` with defaults."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task (Celery's options: countdown, eta, expires, queue, priority, ...).

        With ``typing`` (the default) arguments that do not fit the function raise ``TypeError``
        here, before anything is sent, as in Celery.
        """
        if self.typing:
            self.check_arguments(args or (), kwargs or {})
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return self.app.send_task(self.name, args, kwargs, task=self, **options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async callers: the publish does not block the event loop."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.apply_async(args, kwargs, **options))

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run here and now with a worker's semantics (retries, signals, links); see ``eager``."""
        from celeriac.app.eager import apply_eagerly

        return apply_eagerly(self, tuple(args or ()), dict(kwargs or {}), options)

    # -- inside a running task -----------------------------------------------------------------
    @property
    def request(self) -> ctx.Context:
        """The running call's ``Context`` (a blank one outside a run)."""
        current = ctx.top()
        if current is not None and current[0] is self:
            return current[1]
        return ctx.Context(task=self.name)

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Ask to run again later: raises ``Retry`` (the worker re-sends the message).

        Past ``max_retries`` the given ``exc`` is raised (or ``MaxRetriesExceededError``).
        Outside a worker or eager run the exception is raised at once, as in Celery.
        """
        request = self.request
        if request.called_directly:
            raise exc if exc is not None else Retry("Task can be retried", None)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{request.kwargs}",
                task_args=request.args,
                task_kwargs=request.kwargs,
            )
        when: float | datetime | None = eta
        if when is None:
            when = self.default_retry_delay if countdown is None else countdown
        if args is not None:
            options["args"] = tuple(args)
        if kwargs is not None:
            options["kwargs"] = dict(kwargs)
        retry = Retry(exc=exc, when=when, **options)
        if throw:
            raise retry
        return retry

    def retry_for_autoretry(self, exc: BaseException, request: ctx.Context) -> None:
        """Retry for an exception listed in ``autoretry_for`` (backoff and ``retry_kwargs``)."""
        retry_kwargs = dict(self.retry_kwargs)
        if self.retry_backoff:
            factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            retry_kwargs["countdown"] = exponential_backoff(
                factor, request.retries, self.retry_backoff_max, bool(self.retry_jitter)
            )
        self.retry(exc=exc, **retry_kwargs)

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kw: Any
    ) -> None:
        """Store a custom state (e.g. ``PROGRESS``) and meta for this (or another) task."""
        from celeriac.protocol.result_meta import ResultMeta

        task_id = task_id or self.request.id
        if task_id is None:
            raise ValueError(f"update_state of {self.name}: no task id (not running in a worker)")
        backend = self.app.backend
        if backend is None:
            return
        backend.store_result(
            ResultMeta(task_id=task_id, status=state or states.PENDING, result=meta, children=[])
        )

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the task when the call does not fit its signature."""
        if not self.typing:
            return
        shape = self._shape
        if shape is None:
            import inspect

            shape = self._shape = _Shape(inspect.signature(self.run))
        if type(args) is not tuple and type(args) is not list:
            args = tuple(args)
        if type(kwargs) is not dict:
            kwargs = dict(kwargs)
        if shape.fits(args, kwargs):
            return
        sig = shape.sig
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            params = ", ".join(
                p.name
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                else ("*" if p.kind == p.VAR_POSITIONAL else "**") + p.name
                for p in sig.parameters.values()
            )
            raise TypeError(
                f"{self.name}({params}) called with args={tuple(args)!r} kwargs={kwargs!r}: {exc}"
            ) from None

    # -- signatures and results ----------------------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this task with partial arguments."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: a parent's result is not prepended."""
        return self.signature(args, kwargs, immutable=True)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        from celeriac.canvas.base import Signature

        immutable = bool(options.pop("immutable", False))
        sig: Signature[R] = Signature.made(
            self._app, self.name, list(args or ()), dict(kwargs or {}), options, None, immutable
        )
        return sig

    subtask = signature

    def map(self, it: Any) -> xmap:
        """One task that returns ``[self(item) for item in it]`` (``celery.map``)."""
        from celeriac.canvas import xmap

        return xmap(self.s(), it, app=self._app)

    def starmap(self, it: Any) -> xstarmap:
        """One task that returns ``[self(*args) for args in it]`` (``celery.starmap``)."""
        from celeriac.canvas import xstarmap

        return xstarmap(self.s(), it, app=self._app)

    def chunks(self, it: Any, n: int) -> Chunks:
        """``it`` cut into parts of ``n`` items, one ``starmap`` task per part."""
        from celeriac.canvas import chunks

        return chunks(self.s(), it, n, app=self._app)

    def replace(self, sig: Signature[Any]) -> Any:
        """Replace this running task by ``sig``, which takes over its id, its callbacks and
        errbacks, the rest of its chain and its place in a group or chord. Raises ``Ignore``
        (the worker stores nothing for this run); in an eager run, returns ``sig``'s value."""
        from celeriac.canvas import replacement_for
        from celeriac.exceptions import Ignore

        request = self.request
        if request.called_directly:
            raise RuntimeError(f"{self.name}.replace() can only be called from a running task")
        new = replacement_for(self.app, request, sig)
        if request.is_eager:
            return new.apply().get()
        new.apply_async()
        raise Ignore("Replaced by new task")

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name)

    # -- handlers (Celery's names; the worker calls them) --------------------------------------
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Called before the task body runs."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called after the task succeeded."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called after the task failed."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called when the task is to be retried."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called after the task returned, whatever the outcome."""

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return _lookup_task, (self.name,)


def _lookup_task(name: str) -> Task[Any, Any]:
    from celeriac.app.base import get_current_app

    return get_current_app().tasks[name]


def seconds(value: float | timedelta | None) -> float | None:
    return to_seconds(value)


def new_task_id() -> str:
    return new_id()
