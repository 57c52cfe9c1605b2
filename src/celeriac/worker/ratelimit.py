"""Per-task rate limits: ``Task.rate_limit`` (``'10/s'``, ``'100/m'``, ``'1000/h'``) per worker.

As in Celery, a rate limit applies to each worker on its own (ten workers with ``'10/s'`` run up
to 100 calls a second in all) and ``task_default_rate_limit`` applies to tasks that set none;
``worker_disable_rate_limits`` turns them all off.

Each task name has a token bucket holding at most one token (Celery's capacity), refilled at the
rate: calls are spaced evenly, with no burst after an idle spell. A request whose task has no
token yet is not run and does not take a pool slot: the consumer gives it to ``RateLimiter.hold``,
which books the next free token for it (tokens are booked ahead, so every held request has its
own due time and nothing polls) and hands it back with ``on_ready`` when it is due. Other tasks
keep running meanwhile. Held requests are still held messages (their leases are renewed), and at
shutdown ``release_all`` returns them so that they go back to the broker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.worker.request import Request

logger = logging.getLogger("celeriac.worker.ratelimit")

#: seconds in each rate unit (Celery's ``/s``, ``/m``, ``/h``)
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(rate: str | float | None) -> float:
    """Calls per second: ``'10/s'`` -> 10, ``'100/m'`` -> 1.67, a bare number is per second.

    ``None``, ``''`` and ``0`` mean "no limit" and give 0.
    """
    if rate is None or rate == "":
        return 0.0
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        value = float(rate)
        if value < 0:
            raise ImproperlyConfigured(f"A rate limit cannot be negative: {rate!r}")
        return value
    match = _RATE.match(str(rate))
    if match is None:
        raise ImproperlyConfigured(
            f"Invalid rate limit {rate!r}: expected a number of calls per second, minute or "
            "hour, e.g. '10/s', '100/m', '1000/h'"
        )
    return float(match.group(1)) / UNITS[match.group(2) or "s"]


class TokenBucket:
    """A token bucket that books tokens ahead: ``reserve()`` says how long to wait for one.

    ``tokens`` may go below zero: each booking takes a token now or a future one, so callers
    that book one after the other are spaced ``1/rate`` seconds apart.
    """

    def __init__(
        self, rate: float, capacity: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self._updated = clock()

    def reserve(self) -> float:
        """Take the next token; returns the seconds until it is due (0: run now)."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class _Held:
    request: Request
    timer: asyncio.TimerHandle


class RateLimiter:
    """Delays requests whose task is over its rate limit (see the module docstring)."""

    def __init__(
        self,
        on_ready: Callable[[Request], None],
        *,
        default_rate: str | float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_ready = on_ready
        self.default_rate = default_rate
        self.clock = clock
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}
        self._held: dict[str, _Held] = {}
        self._admitted: set[str] = set()
        self._invalid: set[str] = set()

    def __len__(self) -> int:
        """How many requests are waiting for a token."""
        return len(self._held)

    def bucket(self, name: str, rate: str | float | None) -> TokenBucket | None:
        """The bucket of task ``name`` for ``rate`` (None when unlimited); a new rate resets it."""
        per_second = parse_rate(rate if rate is not None else self.default_rate)
        if per_second <= 0:
            self._buckets.pop(name, None)
            return None
        found = self._buckets.get(name)
        if found is None or found[0] != per_second:
            found = (per_second, TokenBucket(per_second, clock=self.clock))
            self._buckets[name] = found
        return found[1]

    def hold(self, request: Request) -> bool:
        """True when ``request`` must wait for a token: it is then handed back by ``on_ready``."""
        tag = request.tag
        if tag in self._admitted:  # its token was booked already: it is due now
            self._admitted.discard(tag)
            return False
        name = request.task.name
        try:
            bucket = self.bucket(name, request.task.rate_limit)
        except ImproperlyConfigured as exc:  # not enforced; said once per task
            if name not in self._invalid:
                self._invalid.add(name)
                logger.error("Task %s: %s; running it without a rate limit", name, exc)
            return False
        if bucket is None:
            return False
        wait = bucket.reserve()
        if wait <= 0:
            return False
        timer = asyncio.get_running_loop().call_later(wait, self._due, tag)
        self._held[tag] = _Held(request, timer)
        return True

    def _due(self, tag: str) -> None:
        held = self._held.pop(tag, None)
        if held is not None:
            self._admitted.add(tag)
            self.on_ready(held.request)

    def release_all(self) -> list[Request]:
        """Stop waiting: returns the held requests (oldest booking first)."""
        held = list(self._held.values())
        self._held.clear()
        self._admitted.clear()
        for item in held:
            item.timer.cancel()
        return [item.request for item in held]
