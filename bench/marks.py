"""Execution marks: how many tasks ran, and when the first and the last ran, per process.

A benchmark task calls ``mark()``; it costs a lock and a clock read. A daemon thread per process
(started on the first mark, so it is born after a prefork pool's fork) adds the new count to
``bench:done`` and writes the process's first/last times to the hashes ``bench:first`` and
``bench:last`` (field = PID) every 20 ms. The driver waits until ``bench:done`` reaches
N, then takes min(first) and max(last): first to last execution, without one Redis round trip
per task inside the task. With ``BENCH_MARK_URL`` unset, ``mark()`` does nothing.

``mark_now()`` writes the same at once, one pipelined round trip per task: for a process that
may end right after its task (RQ forks a work horse per job), where the flusher never runs.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

DONE, FIRST, LAST = "bench:done", "bench:first", "bench:last"
FLUSH_EVERY = 0.02


class _Marks:
    def __init__(self, url: str) -> None:
        self.url = url
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.thread = threading.Thread(target=self._flusher, name="bench-marks", daemon=True)
        self.thread.start()

    def _flusher(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        flushed = 0
        while True:
            time.sleep(FLUSH_EVERY)
            with self.lock:
                count, first, last = self.count, self.first, self.last
            if count == flushed:
                continue
            pipe = client.pipeline(transaction=False)
            pipe.hset(FIRST, str(self.pid), repr(first))
            pipe.hset(LAST, str(self.pid), repr(last))
            pipe.incrby(DONE, count - flushed)
            pipe.execute()
            flushed = count


_URL = os.environ.get("BENCH_MARK_URL") or None
_marks: _Marks | None = None
_create_lock = threading.Lock()


def mark() -> None:
    """Count one execution (see the module docstring)."""
    global _marks
    if _URL is None:
        return
    marks = _marks
    if marks is None or marks.pid != os.getpid():
        with _create_lock:
            if _marks is None or _marks.pid != os.getpid():
                _marks = _Marks(_URL)
            marks = _marks
    now = time.time()
    with marks.lock:
        marks.count += 1
        if marks.first is None:
            marks.first = now
        marks.last = now


def read(client: Any) -> tuple[int, float | None, float | None]:
    """``(done, first, last)`` as recorded so far (``client``: a redis-py client)."""
    done = int(client.get(DONE) or 0)
    firsts = [float(v) for v in client.hvals(FIRST)]
    lasts = [float(v) for v in client.hvals(LAST)]
    return done, (min(firsts) if firsts else None), (max(lasts) if lasts else None)


_now_client: tuple[int, Any] | None = None


def mark_now() -> None:
    """Count one execution with one pipelined round trip, before returning (see above)."""
    global _now_client
    if _URL is None:
        return
    now = time.time()
    if _now_client is None or _now_client[0] != os.getpid():
        import redis

        _now_client = (os.getpid(), redis.Redis.from_url(_URL))
    pid = str(os.getpid())
    pipe = _now_client[1].pipeline(transaction=False)
    pipe.hsetnx(FIRST, pid, repr(now))
    pipe.hset(LAST, pid, repr(now))
    pipe.incr(DONE)
    pipe.execute()
