"""The application: ``Celeriac`` (alias ``Celery``), its configuration, task registry, broker
and result-backend connections, and the ``current_app`` / ``current_task`` / ``shared_task``
helpers.

Creating an app connects to nothing: the transport and the result backend are opened on first
use, and reopened in a forked child. With neither ``broker_url`` nor ``result_backend`` set, both
use the embedded SQLite default (``celeriac.sqlite3`` in the working directory).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from celeriac import signals
from celeriac.app import config
from celeriac.app import context as ctx
from celeriac.app.registry import SHARED_TASKS, TaskRegistry
from celeriac.app.task import Task
from celeriac.exceptions import ImproperlyConfigured, OperationalError

if TYPE_CHECKING:
    from celeriac.app.messages import Publication
    from celeriac.backends.base import ResultBackend
    from celeriac.protocol.envelope import RawMessage
    from celeriac.protocol.message import TaskMessage
    from celeriac.result import AsyncResult, GroupResult
    from celeriac.transports.base import AsyncTransport, Transport

P = ParamSpec("P")
R = TypeVar("R")

EMBEDDED_URL = "sqlite://"
DEFAULT_LEASE_SECONDS = 60.0


class TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class Celeriac:
    """A Celeriac application: ``Celeriac("proj", broker=..., backend=..., include=[...])``."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | None = None,
        config_source: Any = None,
        set_as_current: bool = True,
        autofinalize: bool = True,
        namespace: str | None = None,
        task_cls: type[Task[Any, Any]] | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.namespace = namespace
        self.task_cls: type[Task[Any, Any]] = task_cls or Task
        self.autofinalize = autofinalize
        self._tasks = TaskRegistry()
        self._finalized = False
        self._finalize_lock = threading.RLock()
        self._autodiscover: list[tuple[Any, str]] = []
        self._pid = os.getpid()
        self._transport: Transport | None = None
        #: per task name, ``quick_send``'s publisher (built on first send)
        self._quick_entries: dict[tuple[str, bool], Any] = {}
        self._backend: ResultBackend | None = None
        self._backend_resolved = False
        self.conf = config.Settings()
        self.conf._replace_layer("env", config.env_defaults())
        if config_source is not None:
            self.config_from_object(config_source, namespace=namespace)
        init: dict[str, Any] = dict(settings)
        if broker is not None:
            init["broker_url"] = broker
        if backend is not None:
            init["result_backend"] = backend
        if include is not None:
            init["include"] = list(include)
        self.conf._set_layer("init", init)
        if set_as_current:
            self.set_current()

    # -- configuration -------------------------------------------------------------------------
    def config_from_object(
        self, obj: Any, silent: bool = False, force: bool = False, namespace: str | None = None
    ) -> None:
        """Read settings from an object, a module, or a dotted path (``"proj.celeryconfig"``)."""
        if isinstance(obj, str):
            try:
                obj = _import_object(obj)
            except ImportError:
                if silent:
                    return
                raise
        found = config.settings_from_object(obj, namespace=namespace or self.namespace)
        self.conf._replace_layer("object", found)
        self._reset_connections()

    def config_from_envvar(
        self, variable_name: str, silent: bool = False, force: bool = False
    ) -> bool:
        """Read settings from the module named by environment variable ``variable_name``."""
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return False
            raise ImproperlyConfigured(
                f"The environment variable {variable_name!r} is not set; it should name the "
                "configuration module, e.g. 'proj.celeryconfig'"
            )
        self.config_from_object(module_name, silent=silent)
        return True

    def _reset_connections(self) -> None:
        self._transport = None
        self._backend = None
        self._backend_resolved = False

    # -- tasks ---------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...

    @overload
    def task(self, *, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...

    def task(  # type: ignore[misc]  # mypy misreads positional-only fn vs **options
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        options["bind"] = bind

        def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
            base = options.pop("base", None) or self.task_cls
            shared = options.pop("shared", False)
            task = base(func, app=None if shared else self, **options)
            if shared:
                SHARED_TASKS[task.name] = task
            else:
                self._tasks.register(task)
            return task

        if fn is not None:
            return decorate(fn)
        return decorate

    @property
    def tasks(self) -> TaskRegistry:
        """Name -> Task; importing ``include``/``imports`` modules first (autofinalize)."""
        if self.autofinalize and not self._finalized:
            self.finalize(auto=True)
        return self._tasks

    def finalize(self, auto: bool = False) -> None:
        """Import the task modules named in ``imports``, ``include`` and ``autodiscover_tasks``."""
        with self._finalize_lock:
            if self._finalized:
                return
            self._finalized = True
            from celeriac.app.builtins import register_builtins

            register_builtins(self)  # celery.map, celery.starmap, celery.chunks, ... (canvas)
            for module in [*self.conf.imports, *self.conf.include]:
                importlib.import_module(module)
            for packages, related_name in self._autodiscover:
                self._discover(packages, related_name)
            signals.import_modules.send(sender=self)

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.<related_name>`` for each package (now with ``force``, else at
        finalize)."""
        if force or self._finalized:
            self._discover(packages, related_name)
        else:
            self._autodiscover.append((packages, related_name))

    def _discover(self, packages: Any, related_name: str) -> None:
        names = packages() if callable(packages) else packages or []
        for package in names:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{related_name}":
                    raise

    # -- sending -------------------------------------------------------------------------------
    def prepare(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Publication:
        """The message and queue for calling ``name`` (see ``celeriac.app.messages``)."""
        task = self._task_named(name, options.pop("task", None))
        from celeriac.app.messages import prepare  # imported on first send: cheap app import

        return prepare(self, name, args, kwargs, task=task, **options)

    def _task_named(self, name: str, task: Task[Any, Any] | None) -> Task[Any, Any] | None:
        """``task``, or the task registered here as ``name`` (None for a name only sent)."""
        if task is None and name in self._tasks:
            return self._tasks[name]
        return task

    def publication_from_signature(
        self,
        sig: dict[str, Any],
        *,
        args_prefix: Sequence[Any] = (),
        parent: TaskMessage | None = None,
        chain: list[dict[str, Any]] | None = None,
    ) -> Publication:
        from celeriac.app.messages import from_signature

        return from_signature(self, sig, args_prefix=args_prefix, parent=parent, chain=chain)

    def encode(self, message: TaskMessage) -> RawMessage:
        from celeriac.protocol.message import encode

        return encode(message)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be registered here); returns its ``AsyncResult``."""
        from celeriac.result import AsyncResult

        add_to_parent = options.pop("add_to_parent", True)
        retry = options.pop("retry", None)
        retry_policy = options.pop("retry_policy", None)
        if not options or list(options) == ["task"]:
            from celeriac.app.quick_send import quick_send

            task = self._task_named(name, options.get("task"))
            quick = quick_send(self, name, task, args, kwargs)
            if quick is not None:
                task_id, publisher, payload = quick
                self._publish_with_retry(lambda: publisher.send(payload), retry, retry_policy)
                return AsyncResult(task_id, app=self, task_name=name)
        publication = self.prepare(name, args, kwargs, **options)
        message = publication.message
        raw = self.encode(message)
        signals.before_task_publish.send(
            sender=name,
            body=raw.body,
            exchange="",
            routing_key=publication.queue,
            headers=raw.headers,
            properties=raw.properties,
            declare=[],
            retry_policy=retry_policy,
        )
        transport = self.transport
        self._publish_with_retry(
            lambda: transport.publish(publication.queue, raw, eta=publication.eta),
            retry,
            retry_policy,
        )
        signals.after_task_publish.send(
            sender=name,
            body=raw.body,
            headers=raw.headers,
            exchange="",
            routing_key=publication.queue,
        )
        result: AsyncResult[Any] = AsyncResult(message.id, app=self, task_name=name)
        current = ctx.top()
        if add_to_parent and current is not None and not current[1].called_directly:
            current[1].children.append(result)
        return result

    def _publish_with_retry(
        self, send: Callable[[], None], retry: bool | None, policy: dict[str, Any] | None
    ) -> None:
        """``send()``, tried again on ``OperationalError`` as ``task_publish_retry`` and the
        retry policy say (Celery's ``retry``/``retry_policy`` options override them)."""
        try:  # the common case: the first attempt works (no retry policy to work out)
            send()
            return
        except OperationalError:
            conf = self.conf
            retry = conf.task_publish_retry if retry is None else retry
            policy = {**conf.task_publish_retry_policy, **(policy or {})}
            max_retries = int(policy.get("max_retries") or 0) if retry else 0
            if max_retries <= 0:
                raise
        interval = float(policy.get("interval_start", 0))
        for attempt in range(1, max_retries + 1):
            time.sleep(interval)
            try:
                send()
                return
            except OperationalError:
                if attempt >= max_retries:
                    raise
                interval = min(
                    interval + float(policy.get("interval_step", 0.2)),
                    float(policy.get("interval_max", 1)),
                )

    # -- connections ---------------------------------------------------------------------------
    @property
    def transport_url(self) -> str:
        """The broker URL in use (the embedded SQLite default when none is configured)."""
        url = self.conf.broker_url or self.conf.broker_write_url
        return str(url) if url else EMBEDDED_URL

    @property
    def backend_url(self) -> str | None:
        """The result backend URL in use; None when results are disabled."""
        url = self.conf.result_backend
        if url:
            return str(url)
        if not (self.conf.broker_url or self.conf.broker_write_url):
            return EMBEDDED_URL
        return None

    def _transport_kwargs(self) -> dict[str, Any]:
        options = dict(self.conf.broker_transport_options or {})
        lease = float(options.get("visibility_timeout", DEFAULT_LEASE_SECONDS))
        return {"lease_seconds": lease, "options": options}

    @property
    def transport(self) -> Transport:
        """The synchronous broker driver (opened on first use; reopened after a fork)."""
        self._check_fork()
        if self._transport is None:
            from celeriac.transports.urls import create_transport

            self._transport = create_transport(self.transport_url, **self._transport_kwargs())
        return self._transport

    def create_async_transport(self) -> AsyncTransport:
        """A broker driver for an event loop (the worker's)."""
        from celeriac.transports.urls import create_async_transport

        return create_async_transport(self.transport_url, **self._transport_kwargs())

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend, or None when no result backend is configured."""
        self._check_fork()
        if not self._backend_resolved:
            self._backend = self._create_backend()
            self._backend_resolved = True
        return self._backend

    def _create_backend(self) -> ResultBackend | None:
        url = self.backend_url
        if url is None:
            return None
        from celeriac.backends.base import ResultBackend
        from celeriac.backends.urls import create_store

        options = dict(self.conf.result_backend_transport_options or {})
        store = create_store(url, options=options)
        return ResultBackend(
            store,
            serializer=self.conf.result_serializer,
            accept=self.conf.result_accept_content or self.conf.accept_content,
            expires=self.conf.result_expires,
            extended=self.conf.result_extended,
        )

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._reset_connections()

    @property
    def accept_content(self) -> list[str]:
        return list(self.conf.accept_content)

    def close(self) -> None:
        """Close the broker and backend connections (they reopen on next use)."""
        if self._transport is not None:
            self._transport.close()
        if self._backend is not None:
            self._backend.close()
        self._reset_connections()

    # -- results -------------------------------------------------------------------------------
    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult[Any]:
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, group_id: str | None = None, results: Any = None) -> GroupResult[Any]:
        from celeriac.result import GroupResult

        return GroupResult(group_id, results, app=self)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        from celeriac.canvas import signature

        kwargs.setdefault("app", self)
        return signature(*args, **kwargs)

    # -- current app ---------------------------------------------------------------------------
    def set_current(self) -> None:
        _state.current = self

    def set_default(self) -> None:
        _state.default = self

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'} at {id(self):#x}>"

    def __enter__(self) -> Celeriac:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Celery = Celeriac


def _import_object(path: str) -> Any:
    """Import ``"pkg.module"``, ``"pkg.module:attr"`` or ``"pkg.module.attr"``."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        module_name, _, attr = path.rpartition(".")
        if not module_name or exc.name != path:
            raise
        module = importlib.import_module(module_name)
        if not hasattr(module, attr):
            raise
        return getattr(module, attr)


class _State(threading.local):
    current: Celeriac | None = None
    default: Celeriac | None = None


_state = _State()
_fallback: list[Celeriac] = []


def get_current_app() -> Celeriac:
    """The app most recently created or made current (a default app if there is none)."""
    app = _state.current or _state.default
    if app is None:
        if not _fallback:
            _fallback.append(Celeriac("default", set_as_current=False))
        app = _fallback[0]
    return app


class _Proxy:
    """Evaluates ``getter()`` on every use (Celery's ``current_app`` / ``current_task``)."""

    def __init__(self, getter: Callable[[], Any]) -> None:
        object.__setattr__(self, "_getter", getter)

    def _get(self) -> Any:
        return self._getter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get(), name, value)

    def __bool__(self) -> bool:
        return bool(self._get())

    def __eq__(self, other: object) -> bool:
        return bool(self._get() == other)

    def __hash__(self) -> int:
        return hash(self._get())

    def __repr__(self) -> str:
        return repr(self._get())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get()(*args, **kwargs)


def _current_task() -> Task[Any, Any] | None:
    top = ctx.top()
    return top[0] if top is not None else None


current_app: Celeriac = _Proxy(get_current_app)  # type: ignore[assignment]
current_task: Task[Any, Any] | None = _Proxy(_current_task)  # type: ignore[assignment]


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...


@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(*, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...


@overload
def shared_task(*, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...


def shared_task(
    fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
) -> Any:
    """A task usable with any app (the current one when it runs or is sent)."""
    options["bind"] = bind

    def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
        base = options.pop("base", None) or Task
        task: Task[Any, Any] = base(func, app=None, **options)
        SHARED_TASKS[task.name] = task
        return task

    if fn is not None:
        return decorate(fn)
    return decorate
