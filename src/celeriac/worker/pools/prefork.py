"""``prefork`` pool: synchronous tasks run in ``concurrency`` child processes (Celery's default).

The children are forked from the worker once, at start, and reused; each runs one task at a
time. The worker's main process keeps doing all broker and backend I/O: a child only receives a
task call (task name, request context, arguments) over a pipe and sends the ``Outcome`` back (the
frame format is in ``prefork_child``). ``async def`` tasks run on the worker's event loop, as in
every pool. Children are created with ``fork`` (Linux, macOS; not Windows), so they have the
app, its configuration and its tasks as the worker had them: nothing is imported again. A task
registered after the worker started is unknown to children forked before. A task that sends
tasks (``.delay()``) publishes through the app's own transport, which is reopened in the child
(the in-memory ``memory://`` broker cannot be shared between processes: use it with the
``threads`` pool).

Limits
    - hard time limit (``time_limit``, ``task_time_limit``, ``--time-limit``): the parent kills
      the child running the task (SIGKILL) and forks a replacement; the task fails with
      ``TimeLimitExceeded`` (FAILURE, message acked as for any failure, as in Celery). The other
      children are not touched.
    - soft time limit: ``SoftTimeLimitExceeded`` is raised inside the task by a timer in the
      child (``SIGALRM``); the task may catch it; the hard limit still applies.
    - ``max_tasks_per_child`` / ``max_memory_per_child`` (resident KiB, read after each task):
      the child leaves after the task that reached the limit, its result delivered first, and a
      replacement is forked at once.
    - a child that dies while running a task (segfault, ``os._exit``, OOM killer, SIGKILL): the
      task fails with ``WorkerLostError`` or, with ``acks_late`` and ``reject_on_worker_lost``,
      its message is delivered again when its lease runs out (so the transport's delivery counter
      counts it, and a message that keeps killing children is dead-lettered); the child is
      replaced.
    - ``autoscale=(max, min)``: see ``worker.autoscale``.

Stopping: warm, each child's job pipe is closed, so it finishes its task and exits (``SIGKILL``
after ``shutdown_timeout``); cold, children get SIGTERM, then SIGKILL one second later. Children
also die with the worker (``PR_SET_PDEATHSIG`` on Linux, end-of-file on their job pipe
elsewhere), so none is left behind.

Forking happens on the worker's event-loop thread while the transport's I/O threads may be
running (as Celery's pool does); see ARCHITECTURE.md for what that implies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celeriac.app.trace import Failed, Outcome, format_exc
from celeriac.exceptions import EncodeError, ImproperlyConfigured
from celeriac.worker.autoscale import DEFAULT_KEEPALIVE, Autoscaler
from celeriac.worker.pools.base import Job, Pool, hard_limit_failure, worker_lost
from celeriac.worker.pools.prefork_child import (
    ChildSpec,
    FrameReader,
    child_main,
    context_state,
    describe_status,
    frame,
    from_wire,
)

if TYPE_CHECKING:
    from celeriac.app.task import Task

logger = logging.getLogger("celeriac.worker.pool")

#: how long a child that closed its pipes may take to exit before it is killed
BURY_TIMEOUT = 2.0


class ChildResult:
    """A result a task sent from a child (``Context.children`` entry): its ``as_tuple``."""

    __slots__ = ("_tuple",)

    def __init__(self, as_tuple: Any) -> None:
        self._tuple = as_tuple

    @property
    def id(self) -> str:
        return str(self._tuple[0][0])

    def as_tuple(self) -> Any:
        return self._tuple

    def __repr__(self) -> str:
        return f"<ChildResult: {self.id}>"


class _Running:
    """A job handed to the pool, and the child running it (once sent)."""

    __slots__ = ("future", "job", "proc", "seq", "started", "timer")

    def __init__(self, seq: int, job: Job, future: asyncio.Future[Outcome]) -> None:
        self.seq = seq
        self.job = job
        self.future = future
        self.proc: _Proc | None = None
        self.started = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def resolve(self, outcome: Outcome) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.future.done():
            self.future.set_result(outcome)


class _Proc:
    """The parent's view of one child process."""

    def __init__(self, number: int, pid: int, job_fd: int, result_fd: int) -> None:
        self.number = number
        self.pid = pid
        self.job_fd = job_fd
        self.result_fd = result_fd
        self.reader = FrameReader()
        self.running: _Running | None = None
        #: takes no more jobs (leaving, being stopped, or killed)
        self.retiring = False
        self.open = True
        self.tasks = 0
        self.idle_since = time.monotonic()
        self.unsent = b""

    @property
    def name(self) -> str:
        return f"ForkPoolWorker-{self.number}"


class PreforkPool(Pool):
    """Child processes running synchronous tasks (see the module docstring)."""

    name = "prefork"

    def __init__(
        self,
        concurrency: int,
        *,
        tasks: Mapping[str, Task[Any, Any]] | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        autoscale: tuple[int, int] | None = None,
        autoscale_keepalive: float = DEFAULT_KEEPALIVE,
        shutdown_timeout: float = 10.0,
    ) -> None:
        if not hasattr(os, "fork"):
            raise ImproperlyConfigured(
                "The prefork pool needs fork(), which this platform lacks; use -P threads"
            )
        if autoscale is not None:
            concurrency = autoscale[0]
        super().__init__(concurrency)
        self.tasks: Mapping[str, Task[Any, Any]] = tasks if tasks is not None else {}
        self.max_tasks_per_child = max_tasks_per_child or None
        self.max_memory_per_child = max_memory_per_child or None
        self.autoscaler = (
            Autoscaler(autoscale[0], autoscale[1], autoscale_keepalive) if autoscale else None
        )
        self.min_procs = autoscale[1] if autoscale else concurrency
        self.shutdown_timeout = shutdown_timeout
        self._procs: dict[int, _Proc] = {}
        self._idle: list[_Proc] = []
        self._waiting: deque[_Running] = deque()
        self._seq = itertools.count(1)
        self._numbers = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._scaler: asyncio.TimerHandle | None = None
        self._burying: set[asyncio.Task[None]] = set()
        self.counters = {"forked": 0, "exited": 0, "time_limits": 0, "lost": 0, "recycled": 0}

    # -- start ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for _ in range(self.min_procs):
            self._spawn()
        if self.autoscaler is not None:
            self._schedule_scale()

    def _spawn(self) -> _Proc:
        """Fork one child (on the loop thread); it is idle at once."""
        assert self._loop is not None
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        number = next(self._numbers)
        siblings = [fd for p in self._procs.values() if p.open for fd in (p.job_fd, p.result_fd)]
        spec = ChildSpec(
            number=number,
            job_fd=job_r,
            result_fd=result_w,
            parent_pid=os.getpid(),
            tasks=self.tasks,
            max_tasks=self.max_tasks_per_child,
            max_memory_kib=self.max_memory_per_child,
            close_fds=[job_w, result_r, *siblings],
        )
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (measured by the integration tests)
            child_main(spec)
        os.close(job_r)
        os.close(result_w)
        os.set_blocking(job_w, False)
        os.set_blocking(result_r, False)
        proc = _Proc(number, pid, job_w, result_r)
        self._procs[pid] = proc
        self._loop.add_reader(result_r, self._on_readable, proc)
        self._idle.append(proc)
        self.counters["forked"] += 1
        logger.debug("Pool process %s started (pid %d)", proc.name, pid)
        return proc

    @property
    def processes(self) -> list[int]:
        """Pids of the children that take jobs."""
        return [p.pid for p in self._procs.values() if not p.retiring]

    def _live(self) -> int:
        return sum(1 for p in self._procs.values() if not p.retiring)

    # -- running jobs --------------------------------------------------------------------------
    async def run_sync(self, job: Job) -> Outcome:
        if self._stopping or self._loop is None:
            raise RuntimeError("the prefork pool is not running")
        running = _Running(next(self._seq), job, self._loop.create_future())
        self._waiting.append(running)
        self._dispatch()
        try:
            return await running.future
        except asyncio.CancelledError:
            if running in self._waiting:
                self._waiting.remove(running)
            raise  # a job already sent runs on; its outcome is dropped

    def _dispatch(self) -> None:
        """Send waiting jobs to idle children, forking (up to ``concurrency``) when none is."""
        while self._waiting and not self._stopping:
            proc = self._take_idle()
            if proc is None:
                if self._live() >= self.concurrency:
                    return
                proc = self._spawn()
                self._idle.remove(proc)
            running = self._waiting.popleft()
            self._send(proc, running)

    def _take_idle(self) -> _Proc | None:
        while self._idle:
            proc = self._idle.pop()
            if not proc.retiring and proc.open:
                return proc
        return None

    def _send(self, proc: _Proc, running: _Running) -> None:
        job = running.job
        name = job.request.task or job.task.name
        try:
            data = frame(running.seq, (name, context_state(job.request), job.soft_time_limit))
        except Exception as exc:
            error = EncodeError(f"{job.label} could not be sent to a pool process: {exc}")
            running.resolve(Failed(error, format_exc(error), 0.0))
            self._idle.append(proc)
            return
        proc.running = running
        running.proc = proc
        running.started = time.monotonic()
        self._write(proc, data)
        if job.time_limit and self._loop is not None:
            running.timer = self._loop.call_later(job.time_limit, self._hard_limit, running)

    def _write(self, proc: _Proc, data: bytes) -> None:
        try:
            written = os.write(proc.job_fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # the child is gone: its end-of-file settles the job
            return
        if written < len(data):
            proc.unsent = data[written:]
            assert self._loop is not None
            self._loop.add_writer(proc.job_fd, self._write_more, proc)

    def _write_more(self, proc: _Proc) -> None:
        try:
            written = os.write(proc.job_fd, proc.unsent)
        except BlockingIOError:
            return
        except OSError:
            written = len(proc.unsent)
        proc.unsent = proc.unsent[written:]
        if not proc.unsent and self._loop is not None:
            self._loop.remove_writer(proc.job_fd)

    # -- results and exits ---------------------------------------------------------------------
    def _on_readable(self, proc: _Proc) -> None:
        try:
            data = os.read(proc.result_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_eof(proc)
            return
        for seq, body in proc.reader.feed(data):
            self._on_result(proc, seq, body)
        self._dispatch()

    def _on_result(self, proc: _Proc, seq: int, body: bytes) -> None:
        running = proc.running
        if running is None or running.seq != seq:
            return  # a job given up on (hard limit) answered after all
        proc.running = None
        proc.tasks += 1
        try:
            wire, children, exiting = pickle.loads(body)
            outcome = from_wire(wire)
        except Exception as exc:
            error = EncodeError(f"The outcome of {running.job.label} could not be read: {exc!r}")
            outcome, children, exiting = Failed(error, format_exc(error), 0.0), [], None
        if children:
            running.job.request.children.extend(ChildResult(c) for c in children)
        running.resolve(outcome)
        if exiting:
            logger.info("Pool process %s (pid %d) %s: replaced", proc.name, proc.pid, exiting)
            self.counters["recycled"] += 1
            self._retire(proc)
        else:
            proc.idle_since = time.monotonic()
            self._idle.append(proc)

    def _retire(self, proc: _Proc) -> None:
        """``proc`` takes no more jobs; fork a replacement if below the minimum."""
        proc.retiring = True
        with contextlib.suppress(ValueError):
            self._idle.remove(proc)
        while not self._stopping and self._live() < self.min_procs:
            self._spawn()

    def _on_eof(self, proc: _Proc) -> None:
        """The child closed its result pipe: it exited (or is exiting)."""
        self._close(proc)
        running, proc.running = proc.running, None
        if not proc.retiring and not self._stopping and running is None:
            logger.warning("Pool process %s (pid %d) exited while idle", proc.name, proc.pid)
        self._retire(proc)
        task = asyncio.get_running_loop().create_task(self._bury(proc, running))
        self._burying.add(task)
        task.add_done_callback(self._burying.discard)
        self._dispatch()

    def _close(self, proc: _Proc) -> None:
        if not proc.open:
            return
        proc.open = False
        loop = self._loop
        if loop is not None:
            loop.remove_reader(proc.result_fd)
            if proc.unsent:
                loop.remove_writer(proc.job_fd)
        for fd in (proc.job_fd, proc.result_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _bury(self, proc: _Proc, running: _Running | None) -> None:
        """Reap the exited child; settle the job it was running (``WorkerLostError``)."""
        status = await self._reap(proc.pid, BURY_TIMEOUT)
        self._procs.pop(proc.pid, None)
        self.counters["exited"] += 1
        if running is None or running.future.done():
            return
        self.counters["lost"] += 1
        how = describe_status(status)
        reason = f"Worker exited prematurely: {how} Job: {running.seq}."
        logger.error(
            "Pool process %s (pid %d) running %s died: %s",
            proc.name,
            proc.pid,
            running.job.label,
            how,
        )
        running.resolve(worker_lost(running.job, reason, running.started))

    async def _reap(self, pid: int, timeout: float) -> int | None:
        """Wait for ``pid`` to exit (SIGKILL after ``timeout``); its wait status."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if reaped:
                return status
            if time.monotonic() > deadline:
                _kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- limits --------------------------------------------------------------------------------
    def _hard_limit(self, running: _Running) -> None:
        proc = running.proc
        running.timer = None
        if proc is None or running.future.done() or proc.running is not running:
            return
        logger.error(
            "Hard time limit (%ss) exceeded for %s: killing pool process %s (pid %d)",
            running.job.time_limit,
            running.job.label,
            proc.name,
            proc.pid,
        )
        self.counters["time_limits"] += 1
        proc.running = None
        _kill(proc.pid, signal.SIGKILL)
        running.resolve(hard_limit_failure(running.job, running.started))
        self._retire(proc)
        self._dispatch()

    def _schedule_scale(self) -> None:
        assert self._loop is not None and self.autoscaler is not None
        every = max(0.05, min(1.0, self.autoscaler.keepalive / 2))
        self._scaler = self._loop.call_later(every, self._scale)

    def _scale(self) -> None:
        """Autoscale: stop processes idle for ``keepalive`` seconds, above the minimum."""
        assert self.autoscaler is not None
        if self._stopping:
            return
        now = time.monotonic()
        idle = sorted((p for p in self._idle if not p.retiring), key=lambda p: p.idle_since)
        count = self.autoscaler.to_stop(self._live(), [now - p.idle_since for p in idle])
        for proc in idle[:count]:
            logger.info("Autoscale: stopping idle pool process %s (pid %d)", proc.name, proc.pid)
            proc.retiring = True
            self._idle.remove(proc)
            self._end_jobs(proc)
        self._schedule_scale()

    def _end_jobs(self, proc: _Proc) -> None:
        """Close the child's job pipe: it finishes its task, then exits."""
        if proc.open and not proc.unsent:
            with contextlib.suppress(OSError):
                os.close(proc.job_fd)
            proc.job_fd = -1

    # -- stop ----------------------------------------------------------------------------------
    async def stop(self, *, cold: bool = False) -> None:
        self._stopping = True
        if self._scaler is not None:
            self._scaler.cancel()
        for running in self._waiting:
            running.future.cancel()
        self._waiting.clear()
        procs = list(self._procs.values())
        for proc in procs:
            proc.retiring = True
            if cold:
                _kill(proc.pid, signal.SIGTERM)
            else:
                self._end_jobs(proc)
        timeout = 1.0 if cold else self.shutdown_timeout
        await self._wait_gone(procs, timeout)

    async def _wait_gone(self, procs: list[_Proc], timeout: float) -> None:
        """Wait for ``procs`` to exit and be reaped; SIGKILL those left after ``timeout``."""
        pending = [asyncio.ensure_future(self._reap(p.pid, timeout)) for p in procs]
        if pending:
            await asyncio.gather(*pending)
        for proc in procs:
            self._close(proc)
            self._procs.pop(proc.pid, None)
        if self._burying:
            await asyncio.gather(*self._burying, return_exceptions=True)
        self._idle.clear()

    def describe(self) -> str:
        if self.autoscaler is not None:
            return f"{self.autoscaler.minimum}..{self.concurrency} (prefork, autoscale)"
        return f"{self.concurrency} (prefork)"

    def info(self) -> dict[str, Any]:
        return {"processes": self.processes, **self.counters}


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
