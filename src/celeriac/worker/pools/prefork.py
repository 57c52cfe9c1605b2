"""``prefork`` pool: synchronous tasks run in ``concurrency`` child processes (Celery's default).

The children are started once and reused; each runs one task at a time. The worker's main
process keeps doing all broker and backend I/O: a child only receives a task call (task name,
request context, arguments) over a pipe and sends the ``Outcome`` back (the frame format is in
``prefork_child``). ``async def`` tasks run on the worker's event loop, as in every pool.

Jobs in flight (pipelining)
    The pool may be handed more jobs than it has children; the extra ones wait in the pool's
    queue (``_waiting``) and go to the first child with room. A child holds an ordered list of
    jobs written to its pipe (``_Proc.running``): the first (the *head*) is running, the others
    wait in the pipe, and the child runs them in order, reading the next frame as soon as it has
    sent a result. With one job per child every task pays a whole round trip (parent writes,
    child wakes, runs, writes, parent wakes, writes the next) with both processes idle in turn;
    a second job already in the pipe lets the child go on at once and the parent collect
    several results per wake-up. So a child is given up to ``PIPELINE_DEPTH`` jobs, but only
    while tasks are short: while the pool's recent task runtime (an exponentially weighted
    average of the outcomes' runtimes, unknown until the first outcome) is below
    ``SHORT_TASK``; otherwise one job per child, as without pipelining. A job queued behind a
    long task in one child's pipe would wait for it while another child idles, and a warm
    shutdown would run it; with short tasks both delays are at most a few milliseconds. A job
    is never written to a child beyond the tasks it has left (``max_tasks_per_child``).

    A job *starts* when it becomes the head (written to an idle child, or the result before it
    arrived): its start time and its hard time limit count from then. When a child leaves with
    jobs still in its pipe (killed at a hard limit, died, or left after
    ``max_tasks_per_child``/``max_memory_per_child``), only the head is settled (failure, or
    its outcome); the jobs behind it never ran, and go back to the front of the pool's queue, in
    order, for another child. ``withdraw`` takes a job out of the pool's queue before it was
    written to any child.

Children are forked (Linux and other systems with ``SOCK_SEQPACKET`` Unix sockets; not macOS
or Windows, where ``ImproperlyConfigured`` says to use ``threads``), so they have the app, its
settings and its tasks without importing anything again; they are forked by the pool's *fork
server* (``prefork_server``), a process the worker forks once when the pool starts, which
stays single-threaded: a child is never forked while one of the worker's I/O threads holds a
lock (that is how children hung in SQLite). So children see the app as it was when the worker
started (a task registered later is unknown to them). A task that sends tasks (``.delay()``)
publishes through the app's own transport, reopened in the child (the in-memory ``memory://``
broker cannot be shared between processes: use it with the ``threads`` pool).

Limits
    - hard time limit (``time_limit``, ``task_time_limit``, ``--time-limit``): the child running
      the task is killed (SIGKILL) and a replacement forked; the task fails with
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

Stopping: jobs still in the pool's queue are cancelled. Warm, each child's job pipe is closed, so
it finishes the jobs written to it (its head and the short ones behind it) and exits (SIGKILL
after ``shutdown_timeout``); cold, children get SIGTERM, then SIGKILL one second later; then the
fork server ends. The fork server and the children also die with the worker
(``PR_SET_PDEATHSIG`` on Linux, end-of-file on their socket or job pipe elsewhere), so none is
left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
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
    context_state,
    describe_status,
    frame,
    from_wire,
)
from celeriac.worker.pools.prefork_server import ForkServer, ServerEvents

if TYPE_CHECKING:
    from celeriac.app.task import Task

logger = logging.getLogger("celeriac.worker.pool")

#: how long a child that closed its pipes may take to exit before it is killed
BURY_TIMEOUT = 2.0
#: how long the first children may take to start
START_TIMEOUT = 10.0
#: jobs a child may hold at once (running + waiting in its pipe) while tasks are short
PIPELINE_DEPTH = 4
#: tasks are *short* (pipelined) while the average runtime is below this many seconds
SHORT_TASK = 0.005
#: weight of the newest runtime in the average
RUNTIME_WEIGHT = 0.2


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
    """A job handed to the pool, and the child it was written to (once sent)."""

    __slots__ = ("data", "future", "job", "proc", "seq", "started", "timer")

    def __init__(self, seq: int, job: Job, future: asyncio.Future[Outcome]) -> None:
        self.seq = seq
        self.job = job
        self.future = future
        self.proc: _Proc | None = None
        self.started = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        #: the job frame, once encoded (kept if the job goes back to the queue)
        self.data = b""

    def resolve(self, outcome: Outcome) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.future.done():
            self.future.set_result(outcome)


class _Proc:
    """The worker's view of one child process (named by its number; its pid comes later)."""

    def __init__(self, number: int, job_fd: int, result_fd: int, exited: Any) -> None:
        self.number = number
        self.pid: int | None = None
        self.job_fd = job_fd
        self.result_fd = result_fd
        self.reader = FrameReader()
        #: the jobs written to the child, in order: the head runs, the others wait in its pipe
        self.running: deque[_Running] = deque()
        #: takes no more jobs (leaving, being stopped, or killed)
        self.retiring = False
        self.open = True
        #: results received
        self.tasks = 0
        #: jobs written
        self.sent = 0
        self.idle_since = time.monotonic()
        #: job frames sent by the current ``_dispatch``, written together at its end
        self.outbox: list[bytes] = []
        #: what the pipe did not take yet (written when it has room)
        self.unsent = b""
        #: close the job pipe once ``unsent`` is written
        self.ending = False
        #: killed at its head's hard limit: what is left in its pipe goes back to the queue
        self.killed = False
        #: the wait status, set when the fork server reports the exit (None: unknown)
        self.exited: asyncio.Future[int | None] = exited

    @property
    def name(self) -> str:
        return f"ForkPoolWorker-{self.number}"

    @property
    def label(self) -> str:
        return f"{self.name} (pid {self.pid or '?'})"


class PreforkPool(Pool):
    """Child processes running synchronous tasks (see the module docstring)."""

    name = "prefork"
    queues_jobs = True

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
        pipeline_depth: int = PIPELINE_DEPTH,
    ) -> None:
        if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            raise ImproperlyConfigured(
                "The prefork pool needs fork() and Unix sockets, which this platform lacks; "
                "use -P threads"
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
        self.pipeline_depth = max(1, pipeline_depth)
        #: the average task runtime (seconds; None until the first outcome)
        self.average_runtime: float | None = None
        self._server: ForkServer | None = None
        self._procs: dict[int, _Proc] = {}
        self._idle: list[_Proc] = []
        self._waiting: deque[_Running] = deque()
        self._seq = itertools.count(1)
        self._numbers = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._scaler: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._live_count = 0
        #: children with frames in their outbox
        self._outgoing: list[_Proc] = []
        self.counters = {"forked": 0, "exited": 0, "time_limits": 0, "lost": 0, "recycled": 0}

    # -- start ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._start_server()
        procs = [p for p in (self._spawn() for _ in range(self.min_procs)) if p is not None]
        deadline = time.monotonic() + START_TIMEOUT
        while any(p.pid is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if any(p.pid is None for p in procs):
            await self.stop(cold=True)
            raise RuntimeError(f"the prefork pool's children did not start in {START_TIMEOUT}s")
        if self.autoscaler is not None:
            self._schedule_scale()

    def _start_server(self) -> None:
        assert self._loop is not None
        template = ChildSpec(
            number=0,
            job_fd=-1,
            result_fd=-1,
            parent_pid=-1,
            tasks=self.tasks,
            max_tasks=self.max_tasks_per_child,
            max_memory_kib=self.max_memory_per_child,
        )
        server = ForkServer(template, ServerEvents(self._forked, self._exited, self._server_lost))
        server.start()
        self._loop.add_reader(server.fileno, server.on_readable)
        self._server = server

    def _spawn(self) -> _Proc | None:
        """Ask the fork server for one more child; it takes jobs at once (they wait in its
        pipe until it runs)."""
        if self._loop is None or self._server is None:
            return None
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        number = next(self._numbers)
        sent = self._server.fork(number, job_r, result_w)
        os.close(job_r)
        os.close(result_w)
        if not sent:
            os.close(job_w)
            os.close(result_r)
            return None
        os.set_blocking(job_w, False)
        os.set_blocking(result_r, False)
        proc = _Proc(number, job_w, result_r, self._loop.create_future())
        self._procs[number] = proc
        self._live_count += 1
        self._loop.add_reader(result_r, self._on_readable, proc)
        self._idle.append(proc)
        self.counters["forked"] += 1
        return proc

    @property
    def processes(self) -> list[int]:
        """Pids of the children that take jobs."""
        return [p.pid for p in self._procs.values() if not p.retiring and p.pid is not None]

    def _live(self) -> int:
        """Children that take jobs (started, not retiring)."""
        return self._live_count

    def _set_retiring(self, proc: _Proc) -> None:
        if not proc.retiring:
            proc.retiring = True
            self._live_count -= 1

    # -- fork server events --------------------------------------------------------------------
    def _forked(self, number: int, pid: int) -> None:
        proc = self._procs.get(number)
        if proc is not None:
            proc.pid = pid
            logger.debug("Pool process %s started", proc.label)

    def _exited(self, number: int, status: int | None) -> None:
        proc = self._procs.get(number)
        if proc is not None and not proc.exited.done():
            proc.exited.set_result(status)

    def _server_lost(self) -> None:
        """The fork server died (its children die with it): start another one."""
        if self._loop is None or self._server is None:
            return
        old, self._server = self._server, None
        self._loop.remove_reader(old.fileno)
        old.close()
        self._in_background(self._reap_server(old, 1.0))
        for proc in list(self._procs.values()):
            self._end_jobs(proc)
            if not proc.exited.done():
                proc.exited.set_result(None)
        if not self._stopping:
            logger.error("The prefork pool's fork server died: starting a new one")
            self._restart_server()

    def _restart_server(self) -> None:
        """Start a fork server again (retried every second while fork fails)."""
        if self._stopping or self._server is not None or self._loop is None:
            return
        try:
            self._start_server()
        except OSError as exc:
            logger.error("Could not start the prefork pool's fork server: %r; retrying", exc)
            self._loop.call_later(1.0, self._restart_server)
            return
        while self._live() < self.min_procs and self._spawn() is not None:
            pass
        self._dispatch()

    async def _reap_server(self, server: ForkServer, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not server.reap(block=False):
            if time.monotonic() > deadline:
                server.terminate()
                server.reap(block=True)
                return
            await asyncio.sleep(0.01)

    # -- running jobs --------------------------------------------------------------------------
    def _enqueue(self, job: Job) -> _Running | None:
        if self._stopping or self._loop is None:
            return None
        running = _Running(next(self._seq), job, self._loop.create_future())
        self._waiting.append(running)
        self._dispatch()
        return running

    def submit(self, job: Job) -> asyncio.Future[Outcome] | None:
        """Every synchronous job (the pool enforces both time limits itself)."""
        running = self._enqueue(job)
        return None if running is None else running.future

    async def run_sync(self, job: Job) -> Outcome:
        running = self._enqueue(job)
        if running is None:
            raise RuntimeError("the prefork pool is not running")
        try:
            return await running.future
        except asyncio.CancelledError:
            if running in self._waiting:
                self._waiting.remove(running)
            raise  # a job already sent runs on; its outcome is dropped

    def withdraw(self, job: Job) -> bool:
        """Take ``job`` back if it is still in the pool's queue (not written to any child): its
        outcome is a failure with ``CancelledError``. False once it was written to a child."""
        for running in self._waiting:
            if running.job is job:
                self._waiting.remove(running)
                cancelled = asyncio.CancelledError("job withdrawn before it started")
                running.resolve(Failed(cancelled, "", 0.0))
                return True
        return False

    def _dispatch(self) -> None:
        """Send waiting jobs to idle children (forking, up to ``concurrency``, when none is);
        then, while tasks are short, behind the jobs of busy children (least loaded first)."""
        waiting = self._waiting
        while waiting and not self._stopping:
            proc = self._take_idle()
            if proc is None:
                if self._live() >= self.concurrency:
                    break
                proc = self._spawn()
                if proc is None:
                    break
                self._idle.remove(proc)
            if not self._send(proc, waiting.popleft()):
                self._idle.append(proc)
        if waiting and not self._stopping and self._pipelining():
            self._fill()
        if self._outgoing:
            self._flush()

    def _pipelining(self) -> bool:
        average = self.average_runtime
        return self.pipeline_depth > 1 and average is not None and average < SHORT_TASK

    def _fill(self) -> None:
        """Queue waiting jobs behind running ones: children with one job first, and so on."""
        waiting = self._waiting
        for level in range(1, self.pipeline_depth):
            for proc in list(self._procs.values()):
                if len(proc.running) == level and self._room(proc) > 0:
                    self._send(proc, waiting.popleft())
                    if not waiting:
                        return

    def _room(self, proc: _Proc) -> int:
        """How many more jobs ``proc`` may be sent (its tasks left, without the depth)."""
        if proc.retiring or not proc.open or proc.job_fd < 0:
            return 0
        if self.max_tasks_per_child is None:
            return 1 << 30
        return self.max_tasks_per_child - proc.sent

    def _take_idle(self) -> _Proc | None:
        while self._idle:
            proc = self._idle.pop()
            if not proc.running and self._room(proc) > 0:
                return proc
        return None

    def _encode(self, running: _Running) -> bool:
        """Encode the job frame once; False (the job failed) when it does not pickle."""
        if running.data:
            return True
        job = running.job
        name = job.request.task or job.task.name
        try:
            running.data = frame(
                running.seq, (name, context_state(job.request), job.soft_time_limit)
            )
        except Exception as exc:
            error = EncodeError(f"{job.label} could not be sent to a pool process: {exc}")
            running.resolve(Failed(error, format_exc(error), 0.0))
            return False
        return True

    def _send(self, proc: _Proc, running: _Running) -> bool:
        """Give ``running`` to ``proc`` (behind its other jobs; written by ``_dispatch``'s
        ``_flush``); False if it could not be encoded (it failed, ``proc`` got nothing)."""
        if not self._encode(running):
            return False
        proc.running.append(running)
        proc.sent += 1
        running.proc = proc
        if len(proc.running) == 1:
            self._begin(running)
        if not proc.outbox:
            self._outgoing.append(proc)
        proc.outbox.append(running.data)
        return True

    def _flush(self) -> None:
        """Write the frames sent by this dispatch: one write per child, so that a child given
        several jobs wakes up once."""
        outgoing, self._outgoing = self._outgoing, []
        for proc in outgoing:
            outbox = proc.outbox
            if outbox:
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                if proc.open and proc.job_fd >= 0:
                    self._write(proc, data)

    def _begin(self, running: _Running) -> None:
        """``running`` became its child's head: it starts now (hard limit armed)."""
        running.started = time.monotonic()
        job = running.job
        if job.time_limit and self._loop is not None:
            running.timer = self._loop.call_later(job.time_limit, self._hard_limit, running)

    def _requeue(self, proc: _Proc) -> None:
        """The jobs waiting in ``proc``'s pipe (the head already settled) never ran: back to the
        front of the queue, in order (cancelled when the pool is stopping)."""
        stranded, proc.running = proc.running, deque()
        for running in reversed(stranded):
            running.proc = None
            if running.timer is not None:
                running.timer.cancel()
                running.timer = None
            if running.future.done():
                continue
            if self._stopping:
                running.future.cancel()
            else:
                self._waiting.appendleft(running)

    def _observe(self, runtime: float) -> None:
        average = self.average_runtime
        if average is None:
            self.average_runtime = runtime
        else:
            self.average_runtime = average + RUNTIME_WEIGHT * (runtime - average)

    def _write(self, proc: _Proc, data: bytes) -> None:
        if proc.unsent:  # behind what the pipe did not take yet, in order
            proc.unsent += data
            return
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
            if proc.ending:
                self._end_jobs(proc)

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
        if not proc.running or proc.running[0].seq != seq:
            return  # a job given up on (hard limit) answered after all
        running = proc.running.popleft()
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
        self._observe(outcome.runtime)
        if exiting:
            logger.info("Pool process %s %s: replaced", proc.label, exiting)
            self.counters["recycled"] += 1
            self._requeue(proc)
            self._retire(proc)
        elif proc.running:
            self._begin(proc.running[0])
        else:
            proc.idle_since = time.monotonic()
            self._idle.append(proc)

    def _retire(self, proc: _Proc) -> None:
        """``proc`` takes no more jobs; fork a replacement if below the minimum."""
        self._set_retiring(proc)
        with contextlib.suppress(ValueError):
            self._idle.remove(proc)
        while not self._stopping and self._live() < self.min_procs:
            if self._spawn() is None:
                break

    def _on_eof(self, proc: _Proc) -> None:
        """The child closed its result pipe: it exited (or is exiting)."""
        self._close(proc)
        # killed at a hard limit: its head is settled already, and the rest of its pipe goes
        # back to the queue (results it sent before the kill landed were read first: a job that
        # had finished is not run again)
        running = proc.running.popleft() if proc.running and not proc.killed else None
        if not proc.retiring and not self._stopping and running is None:
            logger.warning("Pool process %s exited while idle", proc.label)
        self._requeue(proc)
        self._retire(proc)
        self._in_background(self._bury(proc, running))
        self._dispatch()

    def _in_background(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _bury(self, proc: _Proc, running: _Running | None) -> None:
        """Wait for the exit report; settle the job the child was running (``WorkerLostError``)."""
        status = await self._exit_status(proc, BURY_TIMEOUT)
        self._procs.pop(proc.number, None)
        self.counters["exited"] += 1
        if running is None or running.future.done():
            return
        self.counters["lost"] += 1
        how = describe_status(status)
        reason = f"Worker exited prematurely: {how} Job: {running.seq}."
        logger.error("Pool process %s running %s died: %s", proc.label, running.job.label, how)
        outcome = worker_lost(running.job, reason, running.started)
        running.resolve(outcome)
        self._observe(outcome.runtime)

    async def _exit_status(self, proc: _Proc, timeout: float) -> int | None:
        """The child's wait status once it exited (SIGKILL after ``timeout``; None: unknown)."""
        for signum in (None, signal.SIGKILL):
            if signum is not None and self._server is not None:
                self._server.kill(proc.number, signum)
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
        return None

    # -- limits --------------------------------------------------------------------------------
    def _hard_limit(self, running: _Running) -> None:
        proc = running.proc
        running.timer = None
        if proc is None or running.future.done() or not proc.running:
            return
        if proc.running[0] is not running:
            return
        logger.error(
            "Hard time limit (%ss) exceeded for %s: killing pool process %s",
            running.job.time_limit,
            running.job.label,
            proc.label,
        )
        self.counters["time_limits"] += 1
        proc.running.popleft()
        proc.killed = True
        if self._server is not None:
            self._server.kill(proc.number, signal.SIGKILL)
        outcome = hard_limit_failure(running.job, running.started)
        running.resolve(outcome)
        self._observe(outcome.runtime)
        self._retire(proc)  # the jobs behind it go back to the queue at its end-of-file
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
            logger.info("Autoscale: stopping idle pool process %s", proc.label)
            self._set_retiring(proc)
            self._idle.remove(proc)
            self._end_jobs(proc)
        self._schedule_scale()

    def _end_jobs(self, proc: _Proc) -> None:
        """Close the child's job pipe (once what is unsent is written): it finishes the jobs
        in its pipe, then exits."""
        if proc.unsent:
            proc.ending = True
        elif proc.open and proc.job_fd >= 0:
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
            self._set_retiring(proc)
            if cold and self._server is not None:
                self._server.kill(proc.number, signal.SIGTERM)
            else:
                self._end_jobs(proc)
        timeout = 1.0 if cold else self.shutdown_timeout
        await asyncio.gather(*(self._exit_status(p, timeout) for p in procs))
        for proc in procs:
            self._close(proc)
            self._procs.pop(proc.number, None)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._idle.clear()
        server, self._server = self._server, None
        if server is not None and self._loop is not None:
            self._loop.remove_reader(server.fileno)
            server.close()
            await self._reap_server(server, 2.0)

    def describe(self) -> str:
        if self.autoscaler is not None:
            return f"{self.autoscaler.minimum}..{self.concurrency} (prefork, autoscale)"
        return f"{self.concurrency} (prefork)"

    def info(self) -> dict[str, Any]:
        return {"processes": self.processes, **self.counters}
