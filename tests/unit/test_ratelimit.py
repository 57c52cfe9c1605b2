"""Rate limits: parsing Celery's forms, the token bucket (with a fake clock), the limiter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.ratelimit import RateLimiter, TokenBucket, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10/s", 10.0),
        ("100/m", 100 / 60),
        ("1000/h", 1000 / 3600),
        ("5", 5.0),
        (" 2.5 / s ", 2.5),
        (".5/s", 0.5),
        (3, 3.0),
        (0.25, 0.25),
        (None, 0.0),
        ("", 0.0),
        ("0", 0.0),
        (0, 0.0),
    ],
)
def test_parse_rate(text: Any, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["10/d", "ten/s", "10/", "/s", "-1", "1/s/s"])
def test_parse_rate_rejects_nonsense(text: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="rate limit"):
        parse_rate(text)


def test_bucket_spaces_bookings_evenly_and_refills_without_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, clock=clock)
    assert bucket.reserve() == 0.0  # the one token
    waits = [bucket.reserve() for _ in range(4)]  # booked ahead: 0.1 s apart
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4])
    clock.now += 10.0  # a long idle spell gives back one token only (capacity 1)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.1)


def test_bucket_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


class _Request:
    def __init__(self, task: Any, tag: str) -> None:
        self.task = task
        self.tag = tag


def FakeRequest(task: Any, tag: str) -> Any:
    """What the limiter reads of a ``Request``: its task and tag."""
    return _Request(task, tag)


def test_limiter_holds_requests_over_the_limit_and_hands_them_back_in_order() -> None:
    app = Celeriac("rl", broker="memory://rl", backend="memory://rl")

    @app.task(name="t.limited", rate_limit="20/s")
    def limited() -> None: ...

    @app.task(name="t.free")
    def free() -> None: ...

    async def scenario() -> tuple[list[str], list[float], list[Any]]:
        loop = asyncio.get_running_loop()
        ready: list[str] = []
        times: list[float] = []
        done = asyncio.Event()

        def on_ready(request: Any) -> None:
            ready.append(request.tag)
            times.append(loop.time())
            assert not limiter.hold(request)  # its token is due: it runs now
            if len(ready) == 3:
                done.set()

        limiter = RateLimiter(on_ready)
        start = loop.time()
        assert not limiter.hold(FakeRequest(limited, "a"))
        assert [limiter.hold(FakeRequest(limited, t)) for t in "bcd"] == [True] * 3
        assert not limiter.hold(FakeRequest(free, "x"))  # other tasks are not held
        assert len(limiter) == 3
        await asyncio.wait_for(done.wait(), 5)
        left = limiter.release_all()
        return ready, [t - start for t in times], left

    ready, times, left = asyncio.run(scenario())
    assert ready == ["b", "c", "d"]
    assert times[0] >= 0.049 and times[2] >= 0.149
    assert left == []
    app.close()


def test_limiter_release_all_returns_waiting_requests_and_cancels_their_timers() -> None:
    app = Celeriac("rl2", broker="memory://rl2", backend="memory://rl2")

    @app.task(name="t.slow", rate_limit="1/m")
    def slow() -> None: ...

    async def scenario() -> list[str]:
        handed: list[str] = []
        limiter = RateLimiter(lambda r: handed.append(r.tag))
        assert not limiter.hold(FakeRequest(slow, "a"))
        assert limiter.hold(FakeRequest(slow, "b"))
        released = [r.tag for r in limiter.release_all()]
        await asyncio.sleep(0)
        assert handed == [] and len(limiter) == 0
        return released

    assert asyncio.run(scenario()) == ["b"]
    app.close()


def test_default_rate_limit_and_an_invalid_task_limit() -> None:
    app = Celeriac("rl3", broker="memory://rl3", backend="memory://rl3")

    @app.task(name="t.plain")
    def plain() -> None: ...

    @app.task(name="t.broken", rate_limit="lots")
    def broken() -> None: ...

    async def scenario() -> tuple[bool, bool, bool]:
        limiter = RateLimiter(lambda r: None, default_rate="1/h")
        first = limiter.hold(FakeRequest(plain, "a"))
        second = limiter.hold(FakeRequest(plain, "b"))
        invalid = limiter.hold(FakeRequest(broken, "c"))  # logged, not enforced
        limiter.release_all()
        return first, second, invalid

    assert asyncio.run(scenario()) == (False, True, False)
    app.close()
