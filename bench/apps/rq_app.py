"""RQ's benchmark jobs (plain functions, found by RQ by their dotted path).

A job runs in a work horse that RQ forks for it and that exits right after, so the tasks count
themselves with ``mark_now()`` (one round trip) rather than ``mark()`` (a flusher thread).
"""

from __future__ import annotations

import time

from bench.marks import mark_now


def add(x: int, y: int) -> int:
    mark_now()
    return x + y


def add_nr(x: int, y: int) -> int:
    """Enqueued with ``result_ttl=0``: RQ deletes the job and keeps no result."""
    mark_now()
    return x + y


def stamp() -> float:
    """When it ran (wall clock): splits a round trip into its send and its result legs."""
    return time.time()
