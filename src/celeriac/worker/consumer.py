"""The consumer: fetches deliveries, dispatches requests to the pool, batches the I/O.

Fetching
    One fetch loop asks the transport for up to ``prefetch - busy`` deliveries at a time, where
    ``prefetch = concurrency * worker_prefetch_multiplier`` (0 means no limit) and ``busy``
    counts held deliveries plus running tasks whose message was already acked (a finished task
    counts until its message is settled: taking new work before the last ack is written would
    let a task that kills the worker take finished ones down with it). It takes in batches:
    while enough work waits to keep the pool busy, it waits until at least half the prefetch is
    free; it waits when full and wakes when something is released. Fetch errors are logged and
    retried with backoff.

Prefetch that follows the pace (``worker_prefetch_window``, Celeriac's own)
    With a multiplier above 1, the prefetch grows while tasks are short: to as many messages as
    the pool runs in ``worker_prefetch_window`` seconds (default 0.1) at the measured pace (a
    moving average of task run times), at most ``PREFETCH_GROWTH`` times the configured
    prefetch, never below it. Short tasks then travel in large batches (one fetch, one result
    write and one ack call for dozens of tasks), while long tasks are held no more than Celery
    would hold them: a message never waits in a worker much longer than the window while another
    worker could run it. A multiplier of 1 (Celery's advice for long tasks) stays exactly one
    message per slot.

Dispatch (per delivery)
    ``RequestReader.read``: an ``Invalid`` message is dead-lettered (``Execution.invalid``). A
    valid one that has expired is REVOKED; one with a future ``eta`` is ``defer``-red back to the
    broker (never held in memory); the rest are *reserved* and started, oldest first, as pool
    slots (``concurrency``) free up. ``acks_late=False`` acks when a task starts. A pool that
    queues jobs (``Pool.queues_jobs``) is also handed *queueable* requests beyond its slots, up
    to the prefetch: synchronous, ``acks_late``, no ``track_started`` (STARTED would be stored
    before they start). Their time limits count from their start (the pool arms them then). At a
    warm shutdown the queued ones that have not started are withdrawn from the pool and requeued,
    as reserved ones. A synchronous job goes to the pool with ``Pool.submit`` where the pool
    takes it that way (threads without a hard limit, prefork): no asyncio Task per request,
    the outcome is handled in the future's done callback (``_ran``), a plain success at once
    (``Execution.outcome_now``), anything else in a Task. Other jobs run in a Task (``_run``).

Batching
    Everything the worker writes goes through one ``IOBatch`` (``worker.iobatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac._internal.timeutils import utcnow
from celeriac.app.trace import Failed, Outcome, format_exc
from celeriac.worker.execution import log_extra
from celeriac.worker.iobatch import IOBatch
from celeriac.worker.pools.base import Job, lost_for_redelivery
from celeriac.worker.ratelimit import RateLimiter
from celeriac.worker.request import Invalid, Request

if TYPE_CHECKING:
    from celeriac.transports.base import AsyncTransport, Delivery
    from celeriac.worker.execution import Execution
    from celeriac.worker.pools.base import Pool
    from celeriac.worker.request import RequestReader
    from celeriac.worker.state import WorkerState

logger = logging.getLogger("celeriac.worker.consumer")

#: a message due within this many seconds runs now instead of being deferred
ETA_TOLERANCE = 0.01
#: most deliveries asked for in one fetch
FETCH_MAX = 1000
#: the prefetch grows, for short tasks, to at most this many times its configured value
PREFETCH_GROWTH = 8
#: weight of the newest run time in the moving average that paces the prefetch
PACE_WEIGHT = 0.05


def wake_fetch(transport: AsyncTransport) -> None:
    """Interrupt a fetch blocked on the transport's I/O thread (if the driver can)."""
    transport.wake()


class Consumer:
    """Fetch loop, dispatch, and pool slots (see the module docstring)."""

    def __init__(
        self,
        *,
        transport: AsyncTransport,
        reader: RequestReader,
        execution: Execution,
        batch: IOBatch,
        pool: Pool,
        state: WorkerState,
        queues: Sequence[str],
        prefetch: int,
        prefetch_window: float = 0.0,
        fetch_timeout: float = 1.0,
        rate_limits: bool = True,
        default_rate_limit: str | None = None,
    ) -> None:
        self.transport = transport
        self.reader = reader
        self.execution = execution
        self.batch = batch
        self.pool = pool
        self.state = state
        self.queues = list(queues)
        self.concurrency = pool.concurrency
        #: what the worker holds at most now (grows with the pace, see the module docstring)
        self.prefetch = prefetch
        self.base_prefetch = prefetch
        self.prefetch_window = prefetch_window
        self._paced = prefetch > self.concurrency and prefetch_window > 0
        self._pace: float | None = None
        self._pool_queues = pool.queues_jobs
        self._jobs: dict[str, Job] = {}
        self.fetch_timeout = fetch_timeout
        self.fetcher: asyncio.Task[None] | None = None
        self._reserved: deque[Request] = deque()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: futures of the jobs handed to the pool with ``Pool.submit`` (no Task each)
        self._submitted: dict[str, asyncio.Future[Outcome]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._executing = 0
        self._room = asyncio.Event()
        self._stop = asyncio.Event()
        #: rate limits (worker/ratelimit.py): requests waiting for a token, outside pool slots
        self.limiter: RateLimiter | None = None
        if rate_limits:
            self.limiter = RateLimiter(self._readmit, default_rate=default_rate_limit)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.fetcher = loop.create_task(self._fetch_loop(), name="celeriac-fetch")

    def released(self) -> None:
        """Something was released: the fetch loop may have room again."""
        self._room.set()

    # -- fetching ------------------------------------------------------------------------------
    def busy(self) -> int:
        state = self.state
        early_acked = sum(1 for r in state.active.values() if r.tag not in state.held)
        # requests waiting for a rate-limit token take no pool slot: up to `prefetch` of them
        # do not count, so other tasks keep flowing (the worker holds at most 2 x prefetch)
        waiting = min(len(self.limiter), self.prefetch) if self.limiter is not None else 0
        return len(state.held) + early_acked - waiting

    def room(self) -> int:
        if self.prefetch <= 0:
            return FETCH_MAX
        return min(FETCH_MAX, self.prefetch - self.busy())

    def fetch_size(self) -> int:
        """How many deliveries to take now: 0 (wait) while the free room is below half the
        prefetch and enough requests are reserved to keep every pool slot busy, so that the
        worker takes messages in batches instead of one by one as tasks finish."""
        room = self.room()
        if room <= 0 or self.prefetch <= 0:
            return room
        waiting = len(self._reserved) + max(0, self._executing - self.concurrency)
        if room * 2 < self.prefetch and waiting >= self.concurrency:
            return 0
        return room

    def _paced_by(self, runtime: float) -> None:
        """Fold a task's run time into the pace, and size the prefetch by it."""
        pace = self._pace
        pace = self._pace = runtime if pace is None else pace + PACE_WEIGHT * (runtime - pace)
        wanted = int(self.concurrency * self.prefetch_window / max(pace, 1e-6))
        base = self.base_prefetch
        self.prefetch = max(base, min(base * PREFETCH_GROWTH, wanted))

    async def _fetch_loop(self) -> None:
        delay = 0.5
        while not self.stopping:
            room = self.fetch_size()
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                deliveries = await self.transport.fetch(self.queues, room, self.fetch_timeout)
            except Exception as exc:
                logger.error(
                    "Could not fetch from %s: %r; retrying in %.1fs",
                    self.transport.describe(),
                    exc,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            for delivery in deliveries:
                self.state.held[delivery.tag] = delivery
                if self.stopping:
                    self.batch.requeue(delivery)
                    self.state.bump("requeued")
                else:
                    self._dispatch(delivery)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- dispatch ------------------------------------------------------------------------------
    def _dispatch(self, delivery: Delivery) -> None:
        self.state.bump("received")
        read = self.reader.read(delivery)
        if isinstance(read, Invalid):
            self._in_background(self.execution.invalid(read))
            return
        request = read
        signals.task_received.send(sender=self, request=request)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Task %s[%s] received",
                request.name,
                request.id,
                extra=log_extra(request.id, request.name),
            )
        if request.message.expires is not None and request.expired(utcnow()):
            self.execution.expired(request)
            return
        eta = request.eta_timestamp()
        if eta is not None and eta > time.time() + ETA_TOLERANCE:
            logger.debug("Task %s[%s] is due at %s: deferred", request.name, request.id, eta)
            self.batch.defer(delivery, eta)
            self.state.bump("deferred")
            return
        self._reserved.append(request)
        self.state.reserved[request.tag] = request
        self._start_reserved()

    def _readmit(self, request: Request) -> None:
        """A rate-limited request's token is due: it runs next."""
        self._reserved.appendleft(request)
        self._room.set()
        self._start_reserved()

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Internal worker error", exc_info=task.exception())

    def _may_queue(self, request: Request) -> bool:
        """Whether ``request`` may wait in the pool's own queue (see the module docstring)."""
        if not self._pool_queues or self._executing >= (self.prefetch or FETCH_MAX):
            return False
        task = request.task
        return not task.is_async and request.acks_late and not request.track_started

    def _start_reserved(self) -> None:
        reserved = self._reserved
        while reserved and not self.stopping:
            if self._executing >= self.concurrency and not self._may_queue(reserved[0]):
                return
            request = reserved.popleft()
            if self.limiter is not None and self.limiter.hold(request):
                continue  # over its rate limit: handed back by _readmit when a token is due
            self.state.reserved.pop(request.tag, None)
            if request.message.expires is not None and request.expired(utcnow()):
                self.execution.expired(request)
                continue
            self._start(request)

    def _start(self, request: Request) -> None:
        request.started = time.monotonic()
        self.state.active[request.tag] = request
        self._executing += 1
        if not request.acks_late:
            request.acked = True
            self.batch.ack(request.delivery)
        self.execution.started(request)
        soft, hard = request.time_limits()
        job = Job(request.task, request.context, soft, hard)
        tag = request.tag
        self._jobs[tag] = job
        future = None if request.task.is_async else self.pool.submit(job)
        if future is not None:  # no asyncio Task: ``_ran`` is called with the outcome
            self._submitted[tag] = future
            future.add_done_callback(functools.partial(self._ran, request))
            return
        self._tasks[tag] = asyncio.get_running_loop().create_task(self._run(request, job))

    async def _run(self, request: Request, job: Job) -> None:
        try:
            try:
                outcome = await self.pool.run(job)
            except Exception as exc:
                logger.exception("Internal error running %s", job.label)
                outcome = Failed(exc, format_exc(exc), 0.0)
            finally:
                self._finished(request)
            if self._settled_by_run(request, outcome):
                await self._handle(request, outcome)
        finally:
            self._tasks.pop(request.tag, None)
            self._jobs.pop(request.tag, None)

    def _ran(self, request: Request, future: asyncio.Future[Outcome]) -> None:
        """A submitted job's outcome (or its cancellation: the pool dropped it, nothing to
        write): handled here when ``Execution.outcome_now`` can, else by a Task."""
        tag = request.tag
        self._submitted.pop(tag, None)
        self._finished(request)
        job = self._jobs.pop(tag, None)
        if future.cancelled():
            return
        outcome = future.result()
        if not self._settled_by_run(request, outcome):
            return
        try:
            if self.execution.outcome_now(request, outcome):
                return
        except Exception:
            self._internal_error(request)
            return
        if job is not None:
            self._jobs[tag] = job
        self._tasks[tag] = asyncio.get_running_loop().create_task(self._later(request, outcome))

    async def _later(self, request: Request, outcome: Outcome) -> None:
        try:
            await self._handle(request, outcome)
        finally:
            self._tasks.pop(request.tag, None)
            self._jobs.pop(request.tag, None)

    def _finished(self, request: Request) -> None:
        """The pool is done with ``request``: its slot is free."""
        self._executing -= 1
        self.state.active.pop(request.tag, None)
        self.state.notify()
        self._room.set()
        self._start_reserved()

    def _settled_by_run(self, request: Request, outcome: Outcome) -> bool:
        """Settle the message of an abandoned, withdrawn or lost request; True for the others,
        whose outcome is to be handled."""
        if request.abandoned:
            return False
        if request.withdrawn:
            request.acked = True
            self.batch.requeue(request.delivery)
            return False
        if lost_for_redelivery(outcome) and not request.acked:
            self._lapse(request)
            return False
        if self._paced:
            self._paced_by(outcome.runtime)
        return True

    async def _handle(self, request: Request, outcome: Outcome) -> None:
        try:
            await self.execution.outcome(request, outcome)
        except Exception:
            self._internal_error(request)

    def _internal_error(self, request: Request) -> None:
        logger.exception(
            "Internal error handling the outcome of %s[%s]: dead-lettering its message",
            request.name,
            request.id,
        )
        if not request.acked:
            request.acked = True
            self.batch.dead_letter(request.delivery, "internal worker error (see its log)")

    def _lapse(self, request: Request) -> None:
        """The pool process running the task died: stop renewing the message's lease, so that
        the broker hands it out again when the lease runs out, its delivery counter increased
        (a message that keeps killing processes ends in the dead-letter queue)."""
        request.acked = True
        self.state.held.pop(request.tag, None)
        self.state.bump("rejected")
        self.state.notify()
        self._room.set()
        logger.warning(
            "Task %s[%s]: the process running it died; it will be delivered again when its "
            "lease runs out (within %.0fs)",
            request.name,
            request.id,
            self.transport.lease_seconds,
            extra=log_extra(request.id, request.name),
        )

    # -- stopping ------------------------------------------------------------------------------
    async def stop_fetching(self) -> None:
        """Stop fetching; prefetched requests that have not started go back to the broker."""
        self._stop.set()
        self._room.set()
        fetcher = self.fetcher
        deadline = time.monotonic() + self.fetch_timeout + 1.0
        while fetcher is not None and not fetcher.done():
            # a wake that comes before the fetch starts waiting is missed: repeat it
            wake_fetch(self.transport)
            await asyncio.wait({fetcher}, timeout=0.02)
            if time.monotonic() > deadline:
                fetcher.cancel()
                break
        reserved = list(self._reserved)
        if self.limiter is not None:
            reserved += self.limiter.release_all()
        self._reserved.clear()
        self.state.reserved.clear()
        for request in reserved:
            self.batch.requeue(request.delivery)
        withdrawn = self._withdraw_queued()
        if reserved or withdrawn:
            count = len(reserved) + withdrawn
            self.state.bump("requeued", count)
            logger.info("Requeued %d prefetched task(s) that had not started", count)

    def _withdraw_queued(self) -> int:
        """Take back the jobs waiting in the pool's queue; ``_run`` requeues their messages."""
        if not self._pool_queues:
            return 0
        withdrawn = 0
        for tag, job in list(self._jobs.items()):
            request = self.state.active.get(tag)
            if request is not None and not request.acked and self.pool.withdraw(job):
                request.withdrawn = True
                withdrawn += 1
        return withdrawn

    async def wait_running(self) -> None:
        """Wait for running tasks (and the handling of their outcomes) to finish.

        Cancelling this wait cancels nothing else (``asyncio.wait``, not ``gather``): at a cold
        shutdown, tasks that already finished still write their outcomes.
        """
        while self._tasks or self._background or self._submitted:
            pending: set[asyncio.Future[Any]] = {*self._tasks.values(), *self._background}
            pending.update(self._submitted.values())
            await asyncio.wait(pending)

    async def wait_handled(self, timeout: float) -> None:
        """Cold shutdown, after ``abandon_running``: wait (at most ``timeout`` seconds) for the
        tasks that had finished and whose outcomes are still being handled, so their results
        and acks are queued before the worker requeues what it still holds."""
        pending = [task for task in self._tasks.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def abandon_running(self) -> int:
        """Cold shutdown: requeue the messages of running tasks; their outcomes are discarded."""
        abandoned = 0
        for tag, request in list(self.state.active.items()):
            request.abandoned = True
            if not request.acked:
                request.acked = True
                self.batch.requeue(request.delivery)
                self.state.bump("requeued")
            task = self._tasks.get(tag)
            if task is not None:
                task.cancel()
            future = self._submitted.get(tag)
            job = self._jobs.get(tag)
            if future is not None:
                if job is not None:
                    self.pool.withdraw(job)  # a queued job must not start
                future.cancel()
            abandoned += 1
        return abandoned
