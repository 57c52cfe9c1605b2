"""``--autoscale=MAX,MIN``: the prefork pool grows with load and shrinks when idle.

The worker takes ``MAX`` as its concurrency (it reserves messages for ``MAX`` slots, as Celery
does) and starts ``MIN`` processes. The pool forks a new process when a task is to run and no
process is free (up to ``MAX``), and stops processes that have been idle for ``keepalive``
seconds (Celery's ``AUTOSCALE_KEEPALIVE``, 30 s) while more than ``MIN`` run. A stopped process
finishes nothing abruptly: only idle processes are stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from celeriac.exceptions import ImproperlyConfigured

#: seconds a process may stay idle before it is stopped (above the minimum)
DEFAULT_KEEPALIVE = 30.0


def parse_autoscale(value: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"10,3"`` -> ``(10, 3)`` (max, min); ``"10"`` -> ``(10, 0)``; None/"" -> None."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            text_high, _, text_low = value.partition(",")
            pair = (int(text_high), int(text_low or 0))
        else:
            items = list(value)
            pair = (int(items[0]), int(items[1]) if len(items) > 1 else 0)
    except (ValueError, IndexError, TypeError):
        raise ImproperlyConfigured(
            f"Invalid autoscale {value!r}: expected MAX,MIN process counts, e.g. '10,3'"
        ) from None
    high, low = pair
    if high < 1 or low < 0 or low > high:
        raise ImproperlyConfigured(
            f"Invalid autoscale {value!r}: need MAX >= 1 and 0 <= MIN <= MAX"
        )
    return high, low


@dataclass(frozen=True)
class Autoscaler:
    """The shrinking policy (growing is on demand, in the pool)."""

    maximum: int
    minimum: int
    keepalive: float = DEFAULT_KEEPALIVE

    def to_stop(self, live: int, idle_for: Sequence[float]) -> int:
        """How many of the idle processes (idle for ``idle_for`` seconds each) to stop now."""
        expired = sum(1 for seconds in idle_for if seconds >= self.keepalive)
        return max(0, min(expired, live - self.minimum))
