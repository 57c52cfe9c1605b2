"""``threads`` pool: synchronous tasks on ``concurrency`` daemon threads of this process.

``async def`` tasks run on the worker's event loop instead (see ``pools.base``).

The pool queues jobs (``queues_jobs``): the consumer may hand it more short synchronous jobs
than it has threads, and a thread that finishes one takes the next from the queue at once, so a
run of short tasks costs no event-loop round trip between them; finished outcomes reach the loop
in batches (``_Completions``). A queued job that has not started can be withdrawn.

Time limits
    - soft: ``SoftTimeLimitExceeded`` is raised inside the thread (the task may catch it and
      clean up), at the next Python bytecode it executes.
    - hard: a thread cannot be killed. At the hard limit the job's outcome is a
      ``TimeLimitExceeded`` failure (the worker stores FAILURE and acks), ``TimeLimitExceeded``
      is raised inside the thread as a last attempt to stop it, and the thread is *abandoned*:
      the pool starts a replacement so the worker keeps its concurrency, and the abandoned
      thread exits when the task function finally returns (its result is discarded).

The threads are daemon threads (not ``concurrent.futures``), so a cold shutdown can exit the
process while a task still runs; the worker requeues that task's message first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from celeriac.app.trace import Failed, Outcome, execute
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.worker.pools.base import (
    Interruptible,
    Job,
    Pool,
    hard_limit_failure,
    run_interruptible,
)

logger = logging.getLogger("celeriac.worker.pool")

_thread_numbers = itertools.count(1)


class _Completions:
    """Outcomes posted by the pool threads, handed to the loop in batches: a thread appends
    and wakes the loop (``call_soon_threadsafe``) only when no wake-up is pending already, so
    tasks that finish close together cost one wake-up, not one each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: deque[tuple[_ThreadJob, Outcome]] = deque()
        self._lock = threading.Lock()
        self._pending = False

    def post(self, item: _ThreadJob, outcome: Outcome) -> None:
        """From a pool thread."""
        with self._lock:
            self._done.append((item, outcome))
            if self._pending:
                return
            self._pending = True
        with contextlib.suppress(RuntimeError):  # a closed loop: the worker has gone (cold)
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            self._pending = False
            done, self._done = self._done, deque()
        for item, outcome in done:
            item.finish(outcome)


class _ThreadJob:
    """A job queued for the pool's threads, with the future its outcome is delivered to."""

    __slots__ = (
        "completions",
        "future",
        "items",
        "job",
        "soft_timer",
        "started",
        "state",
        "thread",
    )

    def __init__(
        self,
        job: Job,
        future: asyncio.Future[Outcome],
        completions: _Completions,
        items: dict[Job, _ThreadJob],
    ) -> None:
        self.job = job
        self.future = future
        self.completions = completions
        #: the pool's jobs not finished yet (this one leaves it in ``finish``)
        self.items = items
        self.state = Interruptible()
        self.thread: _PoolThread | None = None
        #: when it was queued, then (set by the thread, before ``state.begin``) when it started
        self.started = time.monotonic()
        self.soft_timer: asyncio.TimerHandle | None = None

    def left(self, limit: float) -> float:
        """Seconds left of a time limit that counts from the job's start (all of it while the
        job waits in the queue)."""
        if self.state.phase == Interruptible.PENDING:
            return limit
        return limit - (time.monotonic() - self.started)

    def call(self) -> Outcome:
        job = self.job
        return contextvars.copy_context().run(execute, job.task, job.request)

    def deliver(self, outcome: Outcome) -> None:
        """From the pool thread: the outcome goes to the loop (``finish`` there)."""
        self.completions.post(self, outcome)

    def finish(self, outcome: Outcome | None) -> None:
        """On the loop: the job is over (``outcome`` None: dropped, the future is cancelled)."""
        self.items.pop(self.job, None)
        if self.soft_timer is not None:
            self.soft_timer.cancel()
            self.soft_timer = None
        if not self.future.done():
            if outcome is None:
                self.future.cancel()
            else:
                self.future.set_result(outcome)


class _PoolThread(threading.Thread):
    def __init__(self, pool: ThreadPool) -> None:
        super().__init__(name=f"celeriac-{pool.name}-{next(_thread_numbers)}", daemon=True)
        self.pool = pool
        self.retired = False
        self.current: _ThreadJob | None = None

    def run(self) -> None:
        jobs = self.pool._jobs
        while not self.retired:
            item = jobs.get()
            if item is None:
                return
            self.current = item
            item.thread = self
            item.started = time.monotonic()
            outcome = run_interruptible(item.state, item.call, item.started)
            self.current = None
            if self.retired:
                logger.warning(
                    "Abandoned thread %s: task %s finished after %.1fs (result discarded)",
                    self.name,
                    item.job.label,
                    time.monotonic() - item.started,
                )
                return
            item.deliver(outcome)


class ThreadPool(Pool):
    """Synchronous tasks on ``threads`` (default: ``concurrency``) daemon threads."""

    name = "threads"
    queues_jobs = True

    def __init__(self, concurrency: int, *, threads: int | None = None) -> None:
        super().__init__(concurrency)
        self.size = threads or concurrency
        self._jobs: queue.SimpleQueue[_ThreadJob | None] = queue.SimpleQueue()
        self._items: dict[Job, _ThreadJob] = {}
        self._threads: list[_PoolThread] = []
        self._completions: _Completions | None = None
        self.abandoned = 0

    async def start(self) -> None:
        self._completions = _Completions(asyncio.get_running_loop())
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        thread = _PoolThread(self)
        self._threads.append(thread)
        thread.start()

    def _queue(self, job: Job) -> _ThreadJob:
        loop = asyncio.get_running_loop()
        completions = self._completions
        if completions is None or completions.loop is not loop:
            completions = self._completions = _Completions(loop)
        item = _ThreadJob(job, loop.create_future(), completions, self._items)
        self._items[job] = item
        self._jobs.put(item)
        if job.soft_time_limit:
            item.soft_timer = loop.call_later(job.soft_time_limit, self._soft_limit, item)
        return item

    def submit(self, job: Job) -> asyncio.Future[Outcome] | None:
        """Jobs without a hard time limit (``run_sync`` enforces that one by waiting)."""
        if job.time_limit or not self._threads:
            return None
        return self._queue(job).future

    async def run_sync(self, job: Job) -> Outcome:
        item = self._queue(job)
        try:
            hard = left = job.time_limit or 0.0
            while left:  # the hard limit counts from the start, not from the hand-off
                done, _ = await asyncio.wait({item.future}, timeout=left)
                if done:
                    break
                left = item.left(hard)
                if left <= 0:
                    return self._hard_limit(item)
            return await item.future
        except asyncio.CancelledError:
            item.state.cancel()
            raise
        finally:
            item.finish(None)

    def withdraw(self, job: Job) -> bool:
        item = self._items.get(job)
        if item is None or not item.state.cancel():
            return False
        if not item.future.done():
            withdrawn = asyncio.CancelledError("job withdrawn before it started")
            item.future.set_result(Failed(withdrawn, "", 0.0))
        return True

    def _soft_limit(self, item: _ThreadJob) -> None:
        item.soft_timer = None
        limit = item.job.soft_time_limit or 0.0
        left = item.left(limit)
        if left > 0:  # it waited in the queue: the limit counts from its start
            loop = item.completions.loop
            item.soft_timer = loop.call_later(left, self._soft_limit, item)
            return
        if item.state.interrupt(SoftTimeLimitExceeded):
            logger.warning(
                "Soft time limit (%ss) exceeded for %s", item.job.soft_time_limit, item.job.label
            )

    def _hard_limit(self, item: _ThreadJob) -> Outcome:
        item.future.cancel()
        if not item.state.cancel():  # it started: stop it if we can, abandon its thread
            thread = item.thread
            if thread is not None and not thread.retired:
                thread.retired = True
                self.abandoned += 1
                self._threads.remove(thread)
                self._spawn()
            item.state.interrupt(TimeLimitExceeded)
            logger.error(
                "Hard time limit (%ss) exceeded for %s: a thread cannot be killed; it is "
                "abandoned and a new one started (%d abandoned so far)",
                item.job.time_limit,
                item.job.label,
                self.abandoned,
            )
        return hard_limit_failure(item.job, item.started)

    async def stop(self, *, cold: bool = False) -> None:
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        if cold:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _join, threads, 5.0)

    def info(self) -> dict[str, Any]:
        return {"threads": len(self._threads), "abandoned": self.abandoned}


def _join(threads: list[_PoolThread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
