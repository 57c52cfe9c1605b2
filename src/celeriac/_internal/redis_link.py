"""The reconnect policy shared by the Redis broker and the Redis result store (``Link``).

While the server is unreachable (refused, reset, timed out, loading) a call is tried again with
kombu's backoff - ``interval_start`` growing by ``interval_step`` up to ``interval_max`` - for as
long as the outage is younger than ``connect_retries_timeout``; then ``OperationalError``. The
first failure of an outage and the recovery are each logged once. It lives below both drivers
because transports and backends are independent layers. Imported only when Redis is used.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from celeriac.exceptions import OperationalError

logger = logging.getLogger("celeriac.redis")

#: errors that mean "the server is (for now) unreachable": the call is tried again
RETRYABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
#: connection errors no retry can fix
FATAL: tuple[type[Exception], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
)


class Link:
    """One client's view of its server: outage window, backoff, and one log line each way."""

    def __init__(self, where: str, *, start: float, step: float, cap: float, window: float) -> None:
        self.where = where
        self.start, self.step, self.cap, self.window = start, step, cap, window
        #: monotonic time of the first failure of the current outage (None: link is up)
        self.down_since: float | None = None
        self.failures = 0

    @classmethod
    def from_options(cls, where: str, options: dict[str, Any]) -> Link:
        """From transport options (kombu's names, top level or in ``retry_policy``)."""
        policy = {**options, **dict(options.get("retry_policy") or {})}
        return cls(
            where,
            start=max(0.0, float(policy.get("interval_start", 0.05))),
            step=max(0.0, float(policy.get("interval_step", 0.25))),
            cap=max(0.01, float(policy.get("interval_max", 2.0))),
            window=float(policy.get("connect_retries_timeout", 20.0)),
        )

    def lost(self, what: str, exc: Exception, now: float) -> float:
        """Record a failed attempt; returns how long to wait before the next one.

        Raises ``OperationalError`` when the error is not a lost connection, or when the outage
        has lasted longer than the window.
        """
        if isinstance(exc, FATAL) or not isinstance(exc, RETRYABLE):
            raise OperationalError(f"Redis {what} failed on {self.where}: {exc}") from exc
        if self.down_since is None:
            self.down_since, self.failures = now, 0
            logger.warning(
                "Redis %s unreachable (%s); reconnecting with backoff for up to %.0f s",
                self.where,
                exc,
                self.window,
            )
        delay = min(self.start + self.failures * self.step, self.cap)
        self.failures += 1
        if now + delay > self.down_since + self.window:
            raise OperationalError(
                f"Redis {what} failed on {self.where}: {exc} "
                f"(unreachable for {now - self.down_since:.1f} s)"
            ) from exc
        return delay

    def ok(self, now: float) -> None:
        """A call succeeded: ends the outage (logged once)."""
        if self.down_since is not None:
            logger.warning(
                "Redis %s reachable again after %.1f s", self.where, now - self.down_since
            )
            self.down_since = None
