"""Tasks: decorator forms, options, calling locally, eager apply with a worker's semantics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from celeriac import Celeriac, current_task, shared_task, states
from celeriac.app.task import Task, exponential_backoff
from celeriac.exceptions import Ignore, ImproperlyConfigured, MaxRetriesExceededError, Reject


def test_decorator_forms_and_names(app: Celeriac) -> None:
    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(name="custom.name", max_retries=7, queue="q")
    def named(x: int) -> int:
        return x

    assert plain.name.endswith("test_decorator_forms_and_names.<locals>.plain")
    assert named.name == "custom.name"
    assert named.max_retries == 7 and named.queue == "q"
    assert app.tasks["custom.name"] is named
    assert "custom.name" in app.tasks
    assert repr(named) == "<@task: custom.name>"


def test_unknown_task_option_is_an_error(app: Celeriac) -> None:
    with pytest.raises(ImproperlyConfigured, match="max_retires"):

        @app.task(max_retires=3)
        def f() -> None: ...


def test_options_fall_back_to_settings(app: Celeriac) -> None:
    @app.task
    def f() -> None: ...

    @app.task(acks_late=False, time_limit=10)
    def g() -> None: ...

    assert f.acks_late is True
    app.conf.task_acks_late = False
    assert f.acks_late is False
    app.conf.task_track_started = True
    assert f.track_started is True
    assert g.acks_late is False and g.time_limit == 10


def test_base_class_defaults(app: Celeriac) -> None:
    class MyTask(Task[Any, Any]):
        max_retries = 9
        acks_late = False  # plain class attribute overrides the setting fallback

    @app.task(base=MyTask)
    def f() -> None: ...

    assert isinstance(f, MyTask)
    assert f.max_retries == 9
    assert f.acks_late is False


def test_calling_runs_locally_with_request(app: Celeriac) -> None:
    @app.task(bind=True)
    def whoami(self: Task[Any, Any], x: int) -> tuple[Any, ...]:
        return (self.name, self.request.args, self.request.called_directly, current_task.name)

    name, args, direct, current = whoami(5)
    assert args == (5,) and direct is True and current == name == whoami.name


def test_eager_apply_success_and_failure(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ValueError("boom")

    result = add.apply((2, 3))
    assert result.get() == 5 and result.state == states.SUCCESS and result.successful()
    bad = fail.apply()
    assert bad.state == states.FAILURE and bad.failed()
    assert isinstance(bad.result, ValueError)
    assert "ValueError: boom" in (bad.traceback or "")
    with pytest.raises(ValueError, match="boom"):
        bad.get()
    assert isinstance(bad.get(propagate=False), ValueError)
    with pytest.raises(ValueError):
        fail.apply(throw=True)


def test_eager_retry_until_success(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: Task[Any, Any], x: int) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=KeyError("transient"), countdown=5)
        return x

    assert flaky.apply((7,)).get() == 7
    assert attempts == [0, 1, 2]


def test_eager_retry_gives_up_after_max_retries(app: Celeriac) -> None:
    @app.task(bind=True, max_retries=2)
    def always(self: Task[Any, Any]) -> None:
        raise self.retry(exc=KeyError("still broken"))

    @app.task(bind=True, max_retries=1)
    def no_exc(self: Task[Any, Any]) -> None:
        raise self.retry()

    result = always.apply()
    assert result.state == states.FAILURE and isinstance(result.result, KeyError)
    assert isinstance(no_exc.apply().result, MaxRetriesExceededError)


def test_autoretry_for_with_backoff(app: Celeriac) -> None:
    calls: list[int] = []

    @app.task(
        bind=True,
        autoretry_for=(ConnectionError,),
        retry_backoff=True,
        retry_kwargs={"max_retries": 4},
    )
    def fetch(self: Task[Any, Any]) -> str:
        calls.append(self.request.retries)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert fetch.apply().get() == "ok"
    assert calls == [0, 1, 2]

    @app.task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 1})
    def never() -> None:
        raise ConnectionError("down for good")

    assert isinstance(never.apply().result, ConnectionError)


def test_exponential_backoff() -> None:
    assert exponential_backoff(1, 0, 600) == 1
    assert exponential_backoff(1, 3, 600) == 8
    assert exponential_backoff(2, 10, 600) == 600
    assert 0 <= exponential_backoff(1, 3, 600, full_jitter=True) <= 8


def test_retry_called_directly_raises_exc(app: Celeriac) -> None:
    @app.task(bind=True)
    def f(self: Task[Any, Any]) -> None:
        self.retry(exc=KeyError("direct"))

    with pytest.raises(KeyError):
        f()


def test_ignore_and_reject_outcomes(app: Celeriac) -> None:
    @app.task
    def ignored() -> None:
        raise Ignore()

    @app.task
    def rejected() -> None:
        raise Reject("nope", requeue=False)

    assert ignored.apply().state == states.IGNORED
    assert rejected.apply().state == states.REJECTED


def test_always_eager_delay(app: Celeriac) -> None:
    app.conf.task_always_eager = True

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul.delay(3, 4).get() == 12


def test_eager_link_and_link_error(app: Celeriac) -> None:
    app.conf.task_always_eager = True
    seen: list[Any] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def record(value: Any) -> None:
        seen.append(("link", value))

    @app.task
    def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
        seen.append(("errback", request.id, type(exc).__name__))

    @app.task
    def fail() -> None:
        raise ValueError("x")

    add.apply_async((1, 2), link=record.s())
    result = fail.apply_async(link_error=on_error.s())
    assert seen == [("link", 3), ("errback", result.id, "ValueError")]


def test_async_def_task_eager_and_direct(app: Celeriac) -> None:
    @app.task
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    assert aadd.is_async
    assert aadd.apply((1, 2)).get() == 3
    assert asyncio.run(aadd(2, 2)) == 4

    async def inside_loop() -> int:
        return aadd.apply((5, 5)).get()

    assert asyncio.run(inside_loop()) == 10


def test_check_arguments_names_task(app: Celeriac) -> None:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    add.check_arguments((1, 2), {})
    with pytest.raises(TypeError, match=r"t\.add\(x, y\) called with args=\(1,\).*missing"):
        add.check_arguments((1,), {})

    @app.task(bind=True, name="t.bound")
    def bound(self: Task[Any, Any], x: int) -> int:
        return x

    bound.check_arguments((1,), {})
    with pytest.raises(TypeError):
        bound.check_arguments((1, 2), {})

    @app.task(typing=False)
    def loose(x: int) -> int:
        return x

    loose.check_arguments((), {"anything": 1})


def test_shared_task_uses_current_app() -> None:
    @shared_task(name="tests.shared.add")
    def shared_add(x: int, y: int) -> int:
        return x + y

    app = Celeriac("shared", broker="memory://shared", task_always_eager=True)
    assert app.tasks["tests.shared.add"] is shared_add
    assert shared_add.app is app
    assert shared_add.delay(1, 1).get() == 2


def test_signature_forms(app: Celeriac) -> None:
    @app.task(name="t.add2")
    def add(x: int, y: int) -> int:
        return x + y

    sig = add.s(2)
    assert dict(sig) == {
        "task": "t.add2",
        "args": [2],
        "kwargs": {},
        "options": {},
        "subtask_type": None,
        "immutable": False,
    }
    assert sig(3) == 5
    assert add.si(1, 1).immutable
    assert sig.clone((1,)).args == (1, 2)
    assert sig.set(queue="x").options == {"queue": "x"}
    app.conf.task_always_eager = True
    assert sig.delay(5).get() == 7
    assert add.si(1, 1).apply_async((100,)).get() == 2


def test_precompiled_argument_check_agrees_with_signature_bind() -> None:
    import inspect
    import itertools

    from celeriac.app.task import _Shape

    def f1(x: Any, y: Any) -> None: ...
    def f2(x: Any, y: Any = 1, *a: Any, z: Any, w: Any = 2, **k: Any) -> None: ...
    def f3(*args: Any, **kw: Any) -> None: ...
    def f4(x: Any, *, y: Any) -> None: ...
    def f5() -> None: ...
    def f6(x: Any, y: Any = 2, **kw: Any) -> None: ...

    names = ["x", "y", "z", "w", "k", "q"]
    for fn in (f1, f2, f3, f4, f5, f6):
        sig = inspect.signature(fn)
        shape = _Shape(sig)
        for count, size in itertools.product(range(4), range(3)):
            for keys in itertools.combinations(names, size):
                args, kwargs = tuple(range(count)), dict.fromkeys(keys, 0)
                try:
                    sig.bind(*args, **kwargs)
                    binds = True
                except TypeError:
                    binds = False
                assert shape.fits(args, kwargs) == binds, (fn.__name__, args, kwargs)


def test_argument_check_still_names_the_task() -> None:
    app = Celeriac("t", broker_url="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"add\(x, y\) called with args=\(1, 2, 3\)"):
        add.delay(1, 2, 3)
    with pytest.raises(TypeError, match="multiple values"):
        add.apply_async((1,), {"x": 2})
