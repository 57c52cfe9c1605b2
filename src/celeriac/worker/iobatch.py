"""The worker's writes of one loop turn, performed together: ``IOBatch``.

Everything the worker writes goes through one ``IOBatch``: it collects the publishes,
result records, chord parts, acks, requeues, defers and dead letters of one loop turn and
performs them with one call per kind, in this order: publish, store results, join chords
(``worker.chords.join_chords``: may publish chord bodies), then settle messages (ack,
requeue, defer, dead-letter). While a batch is in flight the next one accumulates, so the
batch size follows the load. A failing call is retried with backoff (a bounded number of
times once the worker is stopping). A result that cannot be serialised is stored as a
FAILURE with ``EncodeError`` instead (never left missing). When the backend and the broker
are one Redis (``worker.joint``), a turn without chord joins stores its results and acks
its messages with one script call (results first, atomically with the acks).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from celeriac import states
from celeriac._internal.timeutils import utcnow
from celeriac.exceptions import EncodeError
from celeriac.protocol.result_meta import ResultMeta, exception_to_dict
from celeriac.worker.chords import ChordPart, join_chords
from celeriac.worker.execution import log_extra
from celeriac.worker.joint import JointWriter

if TYPE_CHECKING:
    from celeriac.backends.base import AsyncResultBackend
    from celeriac.protocol.envelope import RawMessage
    from celeriac.transports.base import AsyncTransport, Delivery
    from celeriac.worker.state import WorkerState

#: the consumer's logger (log lines about the batch kept their name when it moved here)
logger = logging.getLogger("celeriac.worker.consumer")


class _Settle:
    """The messages one loop turn settles (taken together with its results)."""

    __slots__ = ("acked", "acks", "dead", "defers", "requeues")

    def __init__(
        self,
        acks: list[Delivery],
        requeues: list[Delivery],
        defers: list[tuple[Delivery, float]],
        dead: list[tuple[Delivery, str]],
    ) -> None:
        self.acks = acks
        self.requeues = requeues
        self.defers = defers
        self.dead = dead
        #: acks already sent with the results (``JointWriter``)
        self.acked: list[Delivery] = []


class IOBatch:
    """Collects one loop turn's I/O and performs it with one call per kind (see module doc)."""

    def __init__(
        self,
        transport: AsyncTransport,
        backend: AsyncResultBackend | None,
        state: WorkerState,
        *,
        on_release: Callable[[], None] = lambda: None,
    ) -> None:
        self.transport = transport
        self.backend = backend
        self.state = state
        self.on_release = on_release
        #: once stopping, a failing call is given up after a few attempts
        self.closing = False
        self.batches = 0
        self._publishes: list[tuple[str, RawMessage, float | None]] = []
        self._results: list[ResultMeta] = []
        self._acks: list[Delivery] = []
        self._requeues: list[Delivery] = []
        self._defers: list[tuple[Delivery, float]] = []
        self._dead: list[tuple[Delivery, str]] = []
        self._joins: list[ChordPart] = []
        self._runner: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        #: results and acks in one call, when the backend and the broker are one Redis
        self.joint = JointWriter.find(transport, backend)

    # -- queueing ------------------------------------------------------------------------------
    def publish(self, queue: str, message: RawMessage, eta: float | None) -> None:
        self._publishes.append((queue, message, eta))
        self._kick()

    def store(self, meta: ResultMeta) -> None:
        if self.backend is not None:
            self._results.append(meta)
            self._kick()

    def ack(self, delivery: Delivery) -> None:
        self._acks.append(delivery)
        self._kick()

    def requeue(self, delivery: Delivery) -> None:
        self._requeues.append(delivery)
        self._kick()

    def defer(self, delivery: Delivery, eta: float) -> None:
        self._defers.append((delivery, eta))
        self._kick()

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._dead.append((delivery, reason))
        self._kick()

    def join(self, part: ChordPart) -> None:
        """A chord header task's outcome (joined after the results are stored)."""
        if self.backend is None:
            logger.error(
                "Chord %s: task %s cannot be joined, this worker has no result backend; the "
                "chord body %s will not run",
                part.group_id,
                part.task_id,
                part.body.get("task"),
            )
            return
        self._joins.append(part)
        self._kick()

    def pending(self) -> bool:
        return bool(
            self._publishes
            or self._results
            or self._joins
            or self._acks
            or self._requeues
            or self._defers
            or self._dead
        )

    def _kick(self) -> None:
        if self._runner is None:
            self._idle.clear()
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def drain(self) -> None:
        """Wait until everything queued so far has been performed (or given up)."""
        if self.pending() and self._runner is None:
            self._kick()
        await self._idle.wait()

    # -- performing ----------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while self.pending():
                await self._flush()
        finally:
            self._runner = None
            self._idle.set()

    async def _flush(self) -> None:
        # everything of this turn is taken at once: a message queued for settling while this
        # turn's writes are in flight waits for the next turn, after its own result and follow-ups
        publishes, self._publishes = self._publishes, []
        results, self._results = self._results, []
        joins, self._joins = self._joins, []
        settle = _Settle(self._acks, self._requeues, self._defers, self._dead)
        self._acks, self._requeues, self._defers, self._dead = [], [], [], []
        self.batches += 1
        if publishes:
            call = functools.partial(self.transport.publish_many, publishes)
            await self._attempt("publish messages", call, len(publishes))
        if results and settle.acks and not joins and self.joint is not None:
            call = functools.partial(self._store_and_ack, results, settle.acks)
            await self._attempt("store results and ack", call, len(settle.acks))
            settle.acked, settle.acks = settle.acks, []
        elif results:
            await self._attempt("store results", functools.partial(self._store, results), 0)
        if joins and self.backend is not None:
            call = functools.partial(join_chords, joins, self.backend, self.transport)
            await self._attempt("join chords", call, len(joins))
        await self._settle(settle)

    async def _settle(self, settle: _Settle) -> None:
        acks, requeues, defers, dead = settle.acks, settle.requeues, settle.defers, settle.dead
        transport = self.transport
        calls: list[Awaitable[bool]] = []
        if acks:
            calls.append(self._attempt("ack", functools.partial(transport.ack, acks), len(acks)))
        if requeues:
            call = functools.partial(transport.requeue, requeues)
            calls.append(self._attempt("requeue", call, len(requeues)))
        for delivery, eta in defers:
            calls.append(self._attempt("defer", functools.partial(transport.defer, delivery, eta)))
        for delivery, reason in dead:
            call = functools.partial(transport.dead_letter, delivery, reason)
            calls.append(self._attempt("dead-letter", call))
        if calls:
            await asyncio.gather(*calls)
        elif not settle.acked:
            return
        settled = [*settle.acked, *acks, *requeues, *(d for d, _ in defers), *(d for d, _ in dead)]
        for delivery in settled:
            self.state.held.pop(delivery.tag, None)
        self.state.notify()
        self.on_release()

    async def _attempt(
        self, what: str, call: Callable[[], Awaitable[None]], count: int = 1
    ) -> bool:
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                await call()
                return True
            except Exception as exc:
                if self.closing and attempt >= 3:
                    logger.error("Giving up: could not %s (%d): %r", what, count, exc)
                    return False
                logger.error("Could not %s (%d): %r; retrying in %.1fs", what, count, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _store_and_ack(self, metas: list[ResultMeta], acks: list[Delivery]) -> None:
        """Results, then acks, in one call (``JointWriter``); separately when it declines or
        a record cannot be encoded (``_store`` substitutes those)."""
        assert self.joint is not None
        latest = list({meta.task_id: meta for meta in metas}.values())
        try:
            if await self.joint.store_and_ack(latest, acks):
                return
        except (EncodeError, TypeError, ValueError):
            pass
        await self._store(latest)
        await self.transport.ack(acks)

    async def _store(self, metas: list[ResultMeta]) -> None:
        assert self.backend is not None
        latest = list({meta.task_id: meta for meta in metas}.values())
        try:
            await self.backend.store_many(latest)
        except (EncodeError, TypeError, ValueError):
            for meta in latest:
                await self._store_one(meta)

    async def _store_one(self, meta: ResultMeta) -> None:
        assert self.backend is not None
        try:
            await self.backend.store_many([meta])
        except (EncodeError, TypeError, ValueError) as exc:
            substitute = unserialisable(meta, exc)
            logger.error(
                "Task %s: its %s record could not be serialised (%s); stored %s with "
                "EncodeError instead",
                meta.task_id,
                meta.status,
                exc,
                substitute.status,
                extra=log_extra(meta.task_id, None),
            )
            if meta.status == states.SUCCESS:
                self.state.bump("succeeded", -1)
                self.state.bump("failed")
            await self.backend.store_many([substitute])


def unserialisable(meta: ResultMeta, exc: BaseException) -> ResultMeta:
    """The record stored instead of one whose value cannot be serialised."""
    error = EncodeError(
        f"The {meta.status} result of task {meta.task_id} could not be serialised: "
        f"{type(exc).__name__}: {exc}"
    )
    status = states.FAILURE if meta.status == states.SUCCESS else meta.status
    return replace(
        meta,
        status=status,
        result=exception_to_dict(error),
        children=[],
        extended=None,
        date_done=meta.date_done or (utcnow() if status in states.READY_STATES else None),
    )
