"""The pool contract, the ``async def`` runner every pool shares, and thread interruption.

A pool runs one task call (a ``Job``) and returns an ``Outcome``
(``celeriac.app.trace``); it never does broker or backend I/O. The consumer hands a pool as many
jobs as it has slots (``concurrency``); a pool that says it ``queues_jobs`` may also be handed
more synchronous jobs than that, up to the worker's prefetch, which it queues and runs as its
threads or processes free up (a thread takes its next job without waiting for the event loop).
The consumer takes back, with ``withdraw``, a queued job that has not started (warm shutdown).
A pool may also ``submit`` a synchronous job and return a bare future for its outcome, so the
worker runs a plain task with no asyncio Task of its own (threads, prefork).

- ``async def`` tasks run on the worker's event loop in every pool (no thread hop), through
  ``run_coroutine_job``: the soft time limit cancels the coroutine's current ``await`` and
  raises ``SoftTimeLimitExceeded`` there (the task may catch it); the hard time limit cancels
  it for good and the outcome is a ``TimeLimitExceeded`` failure.
- synchronous tasks run where the pool says (``solo``: inline on the loop thread; ``threads``
  and ``asyncio``: on pool threads). Time limits on threads are enforced by raising an
  exception inside the thread (``interrupt_thread``, CPython's ``PyThreadState_SetAsyncExc``),
  which takes effect at the next Python bytecode: a thread blocked in C code is only
  interrupted when it returns to Python.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from celeriac.app.trace import Failed, Outcome, Rejected, aexecute, format_exc
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

if TYPE_CHECKING:
    from celeriac.app.context import Context
    from celeriac.app.task import Task

logger = logging.getLogger("celeriac.worker.pool")


@dataclass(eq=False)
class Job:
    """One task call for a pool: the task, its request context and its time limits (seconds)."""

    task: Task[Any, Any]
    request: Context
    soft_time_limit: float | None = None
    time_limit: float | None = None

    @property
    def label(self) -> str:
        """``name[id]`` for log lines."""
        return f"{self.task.name}[{self.request.id}]"


class Pool(ABC):
    """Runs jobs and returns their outcomes; ``concurrency`` is how many run at once."""

    name: ClassVar[str] = ""
    #: whether the pool may be handed more synchronous jobs than ``concurrency`` (it queues them)
    queues_jobs: ClassVar[bool] = False

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"pool concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare threads/resources; called on the worker's loop before the first job."""

    async def run(self, job: Job) -> Outcome:
        """Run ``job`` to its outcome: ``async def`` tasks on the loop, others ``run_sync``."""
        if job.task.is_async:
            return await run_coroutine_job(job)
        return await self.run_sync(job)

    @abstractmethod
    async def run_sync(self, job: Job) -> Outcome:
        """Run a synchronous task function."""

    def submit(self, job: Job) -> asyncio.Future[Outcome] | None:
        """Start a synchronous ``job`` without a coroutine: the future gets its outcome (the
        pool enforces its time limits), and is cancelled when the pool drops the job (it then
        never ran, or its outcome is lost). None when this pool cannot run ``job`` that way:
        the caller then awaits ``run``. Cancelling the future does not stop the job: take a
        queued job back with ``withdraw``."""
        return None

    def withdraw(self, job: Job) -> bool:
        """Take back a queued ``job`` that has not started: True when it never will (its
        ``run`` then returns a failure the caller discards); False when it runs or ran."""
        return False

    async def stop(self, *, cold: bool = False) -> None:  # noqa: B027 - optional hook
        """Release threads/resources. ``cold``: do not wait for anything still running."""

    def describe(self) -> str:
        """``"4 (threads)"`` for the banner."""
        return f"{self.concurrency} ({self.name})"


# -- async def tasks ---------------------------------------------------------------------------
class _SoftLimited:
    """Drives a coroutine step by step so that a cancellation caused by the soft time limit is
    delivered into it as ``SoftTimeLimitExceeded`` instead of ``CancelledError``.

    The driving asyncio task is cancelled as usual (which also cancels whatever the coroutine
    awaits); when ``interrupt`` asked for it, the resulting ``CancelledError`` is swapped for
    ``SoftTimeLimitExceeded`` and the task's cancellation request is withdrawn (``uncancel``).
    """

    def __init__(self, coro: Coroutine[Any, Any, Outcome]) -> None:
        self._coro = coro
        self._soft_pending = False
        self.interrupted = False

    def interrupt(self, task: asyncio.Task[Outcome]) -> None:
        if not task.done():
            self._soft_pending = True
            self.interrupted = True
            task.cancel()

    def __await__(self) -> Generator[Any, None, Outcome]:
        coro = self._coro
        throw: BaseException | None = None
        while True:
            try:
                if throw is not None:
                    exc, throw = throw, None
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(None)
            except StopIteration as stop:
                result: Outcome = stop.value
                return result
            try:
                yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except asyncio.CancelledError as exc:
                throw = self._converted(exc)
            except BaseException as exc:
                throw = exc

    def _converted(self, exc: asyncio.CancelledError) -> BaseException:
        if not self._soft_pending:
            return exc
        self._soft_pending = False
        current = asyncio.current_task()
        if current is not None and hasattr(current, "uncancel"):
            current.uncancel()
        return SoftTimeLimitExceeded()

    async def drive(self) -> Outcome:
        return await self


def _discard_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def run_coroutine_job(job: Job) -> Outcome:
    """Run an ``async def`` task on the current loop with its soft and hard time limits."""
    if not job.soft_time_limit and not job.time_limit:
        return await aexecute(job.task, job.request)  # nothing to enforce: no extra task
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    driver = _SoftLimited(aexecute(job.task, job.request))
    task: asyncio.Task[Outcome] = loop.create_task(driver.drive())
    soft_timer = None
    if job.soft_time_limit:
        soft_timer = loop.call_later(job.soft_time_limit, driver.interrupt, task)
    try:
        done, _ = await asyncio.wait({task}, timeout=job.time_limit or None)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_discard_result)
        raise
    finally:
        if soft_timer is not None:
            soft_timer.cancel()
    if not done:
        task.cancel()
        task.add_done_callback(_discard_result)
        logger.error("Hard time limit (%ss) exceeded for %s: cancelled", job.time_limit, job.label)
        return hard_limit_failure(job, started)
    if task.cancelled():  # cancelled before its first step: the coroutine never ran
        exc = SoftTimeLimitExceeded() if driver.interrupted else asyncio.CancelledError()
        return Failed(exc, format_exc(exc), time.monotonic() - started)
    return task.result()


def hard_limit_failure(job: Job, started: float) -> Failed:
    """The outcome of a job killed (or abandoned) at its hard time limit."""
    exc = TimeLimitExceeded(job.time_limit)
    return Failed(exc, format_exc(exc), time.monotonic() - started)


def worker_lost(job: Job, reason: str, started: float) -> Outcome:
    """The outcome of a job whose process died: ``WorkerLostError`` as FAILURE, or (with
    ``acks_late`` and ``reject_on_worker_lost``) a redelivery (``lost_for_redelivery``)."""
    exc = WorkerLostError(reason)
    runtime = time.monotonic() - started
    task = job.task
    reject = task.reject_on_worker_lost
    if reject is None:
        reject = task.app.conf.task_reject_on_worker_lost
    if task.acks_late and reject:
        return Rejected(True, exc, runtime)
    return Failed(exc, format_exc(exc), runtime)


def lost_for_redelivery(outcome: Outcome) -> bool:
    """True for ``worker_lost``'s redelivery: the worker lets the message's lease run out."""
    return (
        isinstance(outcome, Rejected)
        and outcome.requeue
        and isinstance(outcome.reason, WorkerLostError)
    )


# -- threads -----------------------------------------------------------------------------------
def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` inside the thread ``thread_id`` at its next bytecode; True if set."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    if done > 1:  # should never happen; undo as the C API documentation says
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return bool(done == 1)


class Interruptible:
    """The state of a synchronous job on a thread, so that a timer may interrupt it safely.

    The timer only raises into the thread while the job is running (``begin`` .. ``end``), under
    a lock; ``end`` also clears an exception that was set but has not fired yet, so an
    exception meant for one job never lands in the next one (or in the event loop, for solo).
    """

    PENDING, RUNNING, DONE = 0, 1, 2

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phase = self.PENDING
        self.thread_id: int | None = None
        self.cancelled = False

    def begin(self) -> bool:
        """Mark the job running in the current thread; False when it was cancelled first."""
        with self.lock:
            if self.cancelled:
                return False
            self.thread_id = threading.get_ident()
            self.phase = self.RUNNING
            return True

    def end(self) -> None:
        """Mark the job done; retried until no time-limit exception interrupts it."""
        while True:
            try:
                with self.lock:
                    self.phase = self.DONE
                    if self.thread_id is not None:
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(self.thread_id), None
                        )
                return
            except (SoftTimeLimitExceeded, TimeLimitExceeded):
                continue

    def cancel(self) -> bool:
        """Stop the job from starting; False when it already started."""
        with self.lock:
            if self.phase != self.PENDING:
                return False
            self.cancelled = True
            return True

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` in the job's thread if the job is still running."""
        with self.lock:
            if self.phase != self.RUNNING or self.thread_id is None:
                return False
            return interrupt_thread(self.thread_id, exc_type)


def run_interruptible(state: Interruptible, call: Callable[[], Outcome], started: float) -> Outcome:
    """Run ``call()`` (which returns an Outcome) between ``state.begin`` and ``state.end``.

    A time-limit exception that lands outside the task body (just before it started or after
    it returned) still yields an outcome: the task's own if it had one, else a failure.
    """
    box: list[Outcome] = []
    try:
        try:
            if state.begin():
                box.append(call())
        finally:
            state.end()
    except BaseException as exc:  # a time limit outside the body; SystemExit from a task
        if not box:
            box.append(Failed(exc, format_exc(exc), time.monotonic() - started))
    if not box:
        cancelled = asyncio.CancelledError("job cancelled before it started")
        box.append(Failed(cancelled, "", 0.0))
    return box[0]
