"""``Worker``: one asyncio loop that starts the components in order, serves, and shuts down.

Start, in order: ``app.finalize()`` (imports ``include``/``imports``), signal ``worker_init``,
the transport (``app.create_async_transport()``), the result backend (``app.backend``, None =
results are not stored), the I/O batch, the pool, the heartbeat (lease renewal), the consumer
(fetch loop); then signal ``worker_ready`` and log ``<hostname> ready.``.

Shutdown
    - *warm* (first SIGTERM/SIGINT, or ``stop()``): stop fetching; prefetched requests that
      have not started go back to the broker at once (``requeue``); running tasks finish and
      their results and acks are written; then the components close in reverse order.
    - *cold* (a second signal, SIGQUIT, or ``stop(cold=True)``): as warm, but the messages of
      running tasks are requeued too and their outcomes discarded; threads still running a
      task are left behind (daemon threads) and the process may exit; prefork children are
      killed.
    - *soft* (``worker_soft_shutdown_timeout`` > 0, Celery 5.5): a cold shutdown first gives
      the running tasks that many seconds to finish (a further signal ends the wait).
    Signals ``worker_shutting_down`` (sig, how, exitcode) then ``worker_shutdown`` fire.
    ``run()`` returns 0 after a warm shutdown, 1 after a cold one or an internal error.

Entry points: ``run()`` blocks (the CLI; installs signal handlers when in the main thread);
``start_in_thread()`` / ``wait_ready()`` / ``stop()`` drive a worker from tests
(``celeriac.testing.worker.start_worker`` wraps them); ``arun()`` runs on an existing loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import signal
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celeriac import __version__, signals
from celeriac._internal.ids import default_nodename
from celeriac._internal.urls import redact_url
from celeriac.app.routing import known_queues
from celeriac.backends.base import AsyncResultBackend
from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.autoscale import parse_autoscale
from celeriac.worker.consumer import Consumer
from celeriac.worker.execution import Execution
from celeriac.worker.heartbeat import Heartbeat, heartbeat_interval
from celeriac.worker.iobatch import IOBatch
from celeriac.worker.pools import POOLS, Pool, create_pool
from celeriac.worker.request import RequestReader
from celeriac.worker.state import WorkerState

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.transports.base import AsyncTransport

logger = logging.getLogger("celeriac.worker")

#: how long the final flush of results/acks may take at shutdown
SHUTDOWN_FLUSH_TIMEOUT = 30.0
#: at a cold shutdown, how long outcomes already being handled may take to queue their writes
COLD_HANDLING_TIMEOUT = 5.0


def parse_queues(queues: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (blanks and duplicates dropped)."""
    if queues is None:
        return []
    items = queues.split(",") if isinstance(queues, str) else list(queues)
    return list(dict.fromkeys(q.strip() for q in items if q and q.strip()))


class Worker:
    """A Celeriac worker for ``app`` (see the module docstring)."""

    def __init__(
        self,
        app: Celeriac,
        *,
        hostname: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        queues: str | Sequence[str] | None = None,
        prefetch_multiplier: int | None = None,
        heartbeat_interval: float | None = None,
        fetch_timeout: float = 1.0,
        autoscale: str | Sequence[int] | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.hostname = default_nodename(hostname)
        self.pool_name = pool or conf.worker_pool or "threads"
        if self.pool_name not in POOLS:
            raise ImproperlyConfigured(
                f"Unknown pool {self.pool_name!r}; accepted: {', '.join(sorted(POOLS))}"
            )
        self.autoscale = parse_autoscale(autoscale)  # prefork: (max, min) processes
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.concurrency = self._concurrency(concurrency)
        self.queues = (
            parse_queues(queues)
            or sorted(known_queues(conf.task_queues) or ())
            or [str(conf.task_default_queue)]
        )
        multiplier = (
            conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        )
        self.prefetch = self.concurrency * int(multiplier) if multiplier and multiplier > 0 else 0
        self.heartbeat_interval = heartbeat_interval or conf.worker_heartbeat_interval
        self.fetch_timeout = fetch_timeout
        self.state = WorkerState()
        self.exitcode: int | None = None
        self.error: BaseException | None = None
        self.transport: AsyncTransport | None = None
        self.backend: AsyncResultBackend | None = None
        self.pool: Pool | None = None
        self.batch: IOBatch | None = None
        self.heartbeat: Heartbeat | None = None
        self.consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._pending_stop: bool | None = None  # a stop() that came before the loop started
        self._stop_event: asyncio.Event | None = None
        self._cold_event: asyncio.Event | None = None
        self._hurry_event: asyncio.Event | None = None  # a signal during a soft shutdown
        #: None while serving; "Warm" or "Cold" once a shutdown started
        self.shutdown: str | None = None

    def _concurrency(self, concurrency: int | None) -> int:
        if self.autoscale is not None and self.pool_name != "prefork":
            raise ImproperlyConfigured("autoscale needs the prefork pool (-P prefork)")
        if self.pool_name == "solo":
            return 1
        if self.autoscale is not None:
            return self.autoscale[0]
        conf = self.app.conf
        count = int(concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        if count < 1:
            raise ImproperlyConfigured(f"concurrency must be at least 1, not {count}")
        return count

    # -- banner --------------------------------------------------------------------------------
    def banner(self) -> str:
        """Celery-style start-up banner: app, transport, results, concurrency, queues, tasks."""
        app = self.app
        transport = self.transport.describe() if self.transport else redact_url(app.transport_url)
        backend_url = app.backend_url
        results = redact_url(backend_url) if backend_url else "disabled://"
        prefetch = self.prefetch or "unlimited"
        scaling = f", autoscale {self.autoscale[1]}..{self.autoscale[0]}" if self.autoscale else ""
        now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        lines = [
            f" -------------- {self.hostname} v{__version__}",
            "--- ***** ----- ",
            f"-- ******* ---- {platform.platform()} {now}",
            "- *** --- * --- ",
            "- ** ---------- [config]",
            f"- ** ---------- .> app:         {app.main or '__main__'}:{id(app):#x}",
            f"- ** ---------- .> transport:   {transport}",
            f"- ** ---------- .> results:     {results}",
            f"- *** --- * --- .> concurrency: {self.concurrency} ({self.pool_name}{scaling})",
            f"-- ******* ---- .> prefetch:    {prefetch}, acks late: {app.conf.task_acks_late}",
            "--- ***** ----- ",
            " -------------- [queues]",
        ]
        lines += [f"                .> {q:<16} exchange={q}(direct) key={q}" for q in self.queues]
        lines += ["", "[tasks]"]
        lines += [f"  . {name}" for name in self.task_names()]
        return "\n".join(lines) + "\n"

    def task_names(self) -> list[str]:
        """Registered task names, without Celeriac's built-in ``celery.*`` tasks."""
        self.app.finalize()
        return sorted(name for name in self.app.tasks if not name.startswith("celery."))

    def info(self) -> dict[str, Any]:
        """Configuration and counters, for tests and inspection."""
        return {
            "hostname": self.hostname,
            "pool": self.pool_name,
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "queues": list(self.queues),
            "state": self.state.info(),
        }

    # -- blocking entry point ------------------------------------------------------------------
    def run(self) -> int:
        """Run until shut down (signals handled in the main thread); returns the exit code."""
        try:
            return asyncio.run(self.arun(install_signal_handlers=True))
        except KeyboardInterrupt:  # before the handlers were installed
            return 1

    async def arun(self, *, install_signal_handlers: bool = False) -> int:
        """Start, serve until stopped, shut down; returns the exit code."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = asyncio.Event()
        self._cold_event = asyncio.Event()
        self._hurry_event = asyncio.Event()
        try:
            with self._lock:
                pending, self._pending_stop = self._pending_stop, None
            if pending is not None:
                self._on_stop_request(pending, None)
            try:
                await self._start()
            except BaseException:
                await self._close(cold=True)
                raise
            if install_signal_handlers:  # this process is the worker's own (``run``)
                self._install_signal_handlers()
                # what start-up loaded (modules, the app, the drivers) lives as long as the
                # process: keep it out of the cyclic collector's full passes
                gc.freeze()
            self._ready.set()
            signals.worker_ready.send(sender=self.consumer)
            logger.info("%s ready.", self.hostname)
            exitcode = await self._serve()
            cold = await self._shutdown()
            self.exitcode = 1 if cold else exitcode
            return self.exitcode
        finally:
            self._finished.set()

    async def _start(self) -> None:
        app = self.app
        app.finalize()
        signals.worker_init.send(sender=self)
        conf = app.conf
        transport = self.transport = app.create_async_transport()
        backend = app.backend
        self.backend = AsyncResultBackend(backend) if backend is not None else None
        state = self.state
        batch = self.batch = IOBatch(transport, self.backend, state)
        execution = Execution(
            app,
            batch,
            state,
            hostname=self.hostname,
            store_results=self.backend is not None,
            result_extended=bool(conf.result_extended),
        )
        reader = RequestReader(
            app.tasks,
            hostname=self.hostname,
            accept=app.accept_content,
            max_message_size=conf.worker_max_message_size,
            max_deliveries=conf.broker_max_deliveries,
        )
        interval = heartbeat_interval(transport.lease_seconds, self.heartbeat_interval)
        heartbeat = self.heartbeat = Heartbeat(transport, state, interval)
        options = self._pool_options(transport)
        pool = self.pool = create_pool(self.pool_name, self.concurrency, **options)
        await pool.start()
        heartbeat.start()
        consumer = self.consumer = Consumer(
            transport=transport,
            reader=reader,
            execution=execution,
            batch=batch,
            pool=pool,
            state=state,
            queues=self.queues,
            prefetch=self.prefetch,
            prefetch_window=float(conf.worker_prefetch_window or 0),
            fetch_timeout=self.fetch_timeout,
            rate_limits=not conf.worker_disable_rate_limits,
            default_rate_limit=conf.task_default_rate_limit,
        )
        batch.on_release = consumer.released
        consumer.start()

    def _pool_options(self, transport: AsyncTransport) -> dict[str, Any]:
        if self.pool_name == "solo":
            return {"lease_seconds": transport.lease_seconds, "before_inline": self._flush}
        if self.pool_name != "prefork":
            return {}
        if self.app.transport_url.startswith("memory://"):
            logger.warning(
                "The memory:// broker lives in this process only: tasks sent from a prefork "
                "child (.delay() inside a task) are lost; use -P threads with it"
            )
        return {
            "tasks": self.app.tasks,
            "max_tasks_per_child": self.max_tasks_per_child,
            "max_memory_per_child": self.max_memory_per_child,
            "autoscale": self.autoscale,
        }

    async def _flush(self) -> None:
        """Before a solo task blocks the loop: write what earlier tasks produced (results,
        acks, follow-ups), then renew every lease."""
        if self.batch is not None:
            await self.batch.drain()
        if self.heartbeat is not None:
            await self.heartbeat.renew()

    async def _serve(self) -> int:
        """Wait for a stop request (or the fetch loop dying); returns the exit code so far."""
        assert self._stop_event is not None and self.consumer is not None
        stop = asyncio.ensure_future(self._stop_event.wait())
        fetcher = self.consumer.fetcher
        waiting: set[asyncio.Future[Any]] = {stop}
        if fetcher is not None:
            waiting.add(fetcher)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if self._stop_event.is_set() or fetcher is None:
            return 0
        error = None if fetcher.cancelled() else fetcher.exception()
        logger.critical("Unrecoverable error in the consumer: %r", error, exc_info=error)
        self.error = error
        self._on_stop_request(False, None)
        return 1

    # -- shutdown ------------------------------------------------------------------------------
    def _on_stop_request(self, cold: bool, signame: str | None) -> None:
        """Called on the loop: the first request starts a shutdown, a second one makes it cold."""
        stop, cold_event = self._stop_event, self._cold_event
        if stop is None or cold_event is None:
            return
        if not stop.is_set():
            how = "Cold" if cold else "Warm"
            self.shutdown = how
            logger.warning("worker: %s shutdown (%s)", how, signame or "requested")
            signals.worker_shutting_down.send(
                sender=self.hostname, sig=signame, how=how, exitcode=1 if cold else 0
            )
            stop.set()
            if cold:
                cold_event.set()
        elif not cold_event.is_set() and (cold or signame is not None):
            logger.warning("worker: Cold shutdown (%s)", signame or "requested")
            self.shutdown = "Cold"
            cold_event.set()
        elif self._hurry_event is not None and (cold or signame is not None):
            self._hurry_event.set()  # ends a soft shutdown at once

    async def _shutdown(self) -> bool:
        """Warm (or cold) shutdown; returns True when it ended cold."""
        assert self.consumer is not None and self._cold_event is not None
        consumer = self.consumer
        await consumer.stop_fetching()
        if not self._cold_event.is_set():
            await self._wait_running(self._cold_event)
        timeout = float(self.app.conf.worker_soft_shutdown_timeout or 0)
        if self._cold_event.is_set() and timeout > 0 and self.state.active:
            assert self._hurry_event is not None
            logger.warning(
                "worker: Soft shutdown: %d running task(s) may take up to %ss to finish",
                len(self.state.active),
                timeout,
            )
            await self._wait_running(self._hurry_event, timeout)
        is_cold = self._cold_event.is_set()
        if is_cold:
            count = consumer.abandon_running()
            if count:
                logger.warning("Cold shutdown: requeued %d running task(s)", count)
            # outcomes already being handled (an errback still running) queue their writes first
            await consumer.wait_handled(COLD_HANDLING_TIMEOUT)
        await self._close(cold=is_cold)
        return is_cold

    async def _wait_running(self, event: asyncio.Event, timeout: float | None = None) -> None:
        """Wait for the running tasks to finish, until ``event`` is set or ``timeout`` passes."""
        assert self.consumer is not None
        running = asyncio.ensure_future(self.consumer.wait_running())
        other = asyncio.ensure_future(event.wait())
        await asyncio.wait({running, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        other.cancel()
        if not running.done():
            running.cancel()

    async def _close(self, *, cold: bool) -> None:
        """Flush and close the components in reverse order of start (each may be missing)."""
        if self.batch is not None:
            self.batch.closing = True
            try:
                await asyncio.wait_for(self.batch.drain(), SHUTDOWN_FLUSH_TIMEOUT)
            except asyncio.TimeoutError:
                logger.error(
                    "Could not write all results and acks within %ss", SHUTDOWN_FLUSH_TIMEOUT
                )
        await self._requeue_leftovers()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.pool is not None:
            await self.pool.stop(cold=cold)
        if self.transport is not None:
            await self.transport.close()
        if self.backend is not None:
            await self.backend.close()
        signals.worker_shutdown.send(sender=self)

    async def _requeue_leftovers(self) -> None:
        held = list(self.state.held.values())
        if not held or self.transport is None:
            return
        logger.warning("Requeueing %d message(s) still held at shutdown", len(held))
        try:
            await self.transport.requeue(held)
        except Exception as exc:
            logger.error("Could not requeue %d message(s): %r", len(held), exc)
        self.state.held.clear()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        wanted = {"SIGTERM": False, "SIGINT": False, "SIGQUIT": True}
        for name, cold in wanted.items():
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                loop.add_signal_handler(signum, self._on_stop_request, cold, name)
            except (NotImplementedError, RuntimeError):  # Windows: plain handlers
                signal.signal(signum, self._threadsafe_handler(cold, name))

    def _threadsafe_handler(self, cold: bool, name: str) -> Any:
        def handler(signum: int, frame: Any) -> None:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._on_stop_request, cold, name)

        return handler

    # -- driving from another thread -----------------------------------------------------------
    def start_in_thread(self, name: str | None = None) -> threading.Thread:
        """Run the worker on a new daemon thread (no signal handlers); see ``wait_ready``."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self.hostname} was already started")
        thread = threading.Thread(
            target=self._thread_main, name=name or f"celeriac-worker {self.hostname}", daemon=True
        )
        self._thread = thread
        thread.start()
        return thread

    def _thread_main(self) -> None:
        try:
            self.exitcode = asyncio.run(self.arun())
        except BaseException as exc:
            self.error = exc
            self.exitcode = 1
            logger.critical("Worker %s failed: %r", self.hostname, exc, exc_info=exc)
        finally:
            self._finished.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the worker serves (True) or ``timeout`` passes (False).

        A worker that failed to start re-raises its error here.
        """
        step = 0.05
        remaining = timeout
        while not self._ready.wait(step if remaining is None else min(step, remaining)):
            if self._finished.is_set():
                if self.error is not None:
                    raise self.error
                return self._ready.is_set()
            if remaining is not None:
                remaining -= step
                if remaining <= 0:
                    return False
        return True

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._finished.is_set()

    def stop(self, cold: bool = False, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Ask for a warm (or cold) shutdown from any thread; with ``wait``, block until the
        worker has stopped (or ``timeout`` passes). Returns True when it has stopped."""
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._loop is None:
                    self._pending_stop = cold or bool(self._pending_stop)
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: already stopped
                loop.call_soon_threadsafe(self._on_stop_request, cold, None)
        if not wait or threading.get_ident() == self._loop_thread:
            return self._finished.is_set()
        if self._thread is None and self._loop is None:
            return self._finished.is_set()
        return self._finished.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the worker has stopped; True when it has."""
        return self._finished.wait(timeout)
