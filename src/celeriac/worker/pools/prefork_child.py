"""The prefork pool's child process, and what travels over its pipes.

Frames
    Both directions use one frame format: a 4-byte big-endian length, then an 8-byte job number,
    then a pickle. A *job* frame (parent -> child) pickles ``(task name, context state, soft time
    limit)``; a *result* frame (child -> parent) pickles ``(outcome, children, exiting)``, where
    ``outcome`` is an ``Outcome`` in wire form (``to_wire``/``from_wire``: plain tuples, so that a
    ``Retry``'s options survive), ``children`` the ``as_tuple()`` of the results the task sent,
    and ``exiting`` why the child leaves after this job (``None`` when it stays). The job number
    comes first so that a result whose pickle cannot be read still settles its job.

Picklable outcomes
    Before sending, the child checks that the outcome pickles (and, for exceptions, unpickles):
    an exception that does not is replaced by ``PoolRemoteError``, which keeps its type name,
    module and arguments (unpicklable arguments become their ``repr``), so the result record is
    the same; a return value that does not pickle fails the task with ``EncodeError``.

The child (``child_main``, entered right after ``os.fork()`` in the fork server, never returning)
    resets the signals it inherited (SIGINT is ignored, as in Celery: Ctrl-C reaches the whole
    process group and the worker decides), closes the fork server's file descriptors, asks Linux
    to kill it when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), turns the garbage
    collector back on (the server keeps it off), sends ``worker_process_init``, then runs jobs until
    its job pipe ends, sending ``worker_process_shutdown`` before it exits. The soft time limit
    is a ``SIGALRM`` timer (``setitimer``): ``SoftTimeLimitExceeded`` is raised inside the task,
    which may catch it. After each job the child counts its tasks and reads its resident memory,
    and leaves after the job that reached ``max_tasks_per_child`` or ``max_memory_per_child``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import pickle
import resource
import signal
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from celeriac import signals
from celeriac.app.context import Context
from celeriac.app.trace import (
    Failed,
    Ignored,
    Outcome,
    Rejected,
    Retrying,
    Succeeded,
    execute,
    format_exc,
)
from celeriac.exceptions import (
    EncodeError,
    NotRegistered,
    RemoteError,
    Retry,
    SoftTimeLimitExceeded,
)

if TYPE_CHECKING:
    from celeriac.app.task import Task

logger = logging.getLogger("celeriac.worker.pool")

#: frame length (of what follows), then the job number
HEADER = struct.Struct("!IQ")
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
PR_SET_PDEATHSIG = 1


# -- frames ------------------------------------------------------------------------------------
def frame(seq: int, payload: Any) -> bytes:
    """One frame: length, job number, pickle of ``payload`` (may raise a pickling error)."""
    body = pickle.dumps(payload, PICKLE_PROTOCOL)
    return HEADER.pack(len(body) + 8, seq) + body


class FrameReader:
    """Splits a byte stream into ``(job number, pickle bytes)`` frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= HEADER.size:
            length, seq = HEADER.unpack_from(buffer, start)
            end = start + 4 + length
            if len(buffer) < end:
                break
            yield seq, bytes(buffer[start + HEADER.size : end])
            start = end
        if start:
            del buffer[:start]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking file descriptor."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- contexts and outcomes on the wire ---------------------------------------------------------
def context_state(request: Context) -> dict[str, Any]:
    """What a child needs of a request context: all of it but the decoded message and the
    children (the message's fields are in the context already)."""
    state = dict(request.__dict__)
    state["message"] = None
    state["children"] = []
    return state


def context_from_state(state: dict[str, Any]) -> Context:
    request = Context.__new__(Context)
    request.__dict__.update(state)
    return request


def to_wire(outcome: Outcome) -> tuple[Any, ...]:
    """An outcome as a plain tuple (``Retry`` does not pickle its options)."""
    if isinstance(outcome, Succeeded):
        return ("S", outcome.value, outcome.runtime)
    if isinstance(outcome, Failed):
        return ("F", outcome.exc, outcome.traceback, outcome.runtime)
    if isinstance(outcome, Retrying):
        retry = outcome.retry
        how = (retry.message, retry.exc, retry.when, retry.options)
        return ("R", outcome.exc, outcome.eta, how, outcome.traceback, outcome.runtime)
    if isinstance(outcome, Rejected):
        return ("J", outcome.requeue, outcome.reason, outcome.runtime)
    return ("I", outcome.runtime)


def from_wire(wire: tuple[Any, ...]) -> Outcome:
    kind = wire[0]
    if kind == "S":
        return Succeeded(wire[1], wire[2])
    if kind == "F":
        return Failed(wire[1], wire[2], wire[3])
    if kind == "R":
        _, exc, eta, (message, retry_exc, when, options), traceback, runtime = wire
        retry = Retry(message, retry_exc, when, **options)
        return Retrying(exc, eta, retry, traceback, runtime)
    if kind == "J":
        return Rejected(wire[1], wire[2], wire[3])
    return Ignored(wire[1])


class PoolRemoteError(RemoteError):
    """Stands for an exception that could not be pickled: its type, module and arguments."""

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.exc_type, self.exc_module, *self.args)


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value, PICKLE_PROTOCOL)
    except Exception:
        return False
    return True


def portable_exception(exc: BaseException | None) -> BaseException | None:
    """``exc`` itself if it survives a pickle round trip, else a ``PoolRemoteError``."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc, PICKLE_PROTOCOL))
    except Exception:
        cls = type(exc)
        args = [arg if _picklable(arg) else repr(arg) for arg in exc.args]
        return PoolRemoteError(cls.__qualname__, cls.__module__, *args)
    return exc


def portable(wire: tuple[Any, ...]) -> tuple[Any, ...]:
    """``wire`` with its exceptions made portable and unpicklable values replaced."""
    kind = wire[0]
    if kind == "S":
        if _picklable(wire[1]):
            return wire
        error = EncodeError(
            f"The return value of the task could not be sent from its pool process (it cannot "
            f"be pickled): {type(wire[1]).__name__}"
        )
        return ("F", error, "", wire[2])
    if kind == "F":
        return ("F", portable_exception(wire[1]), wire[2], wire[3])
    if kind == "R":
        _, exc, eta, (message, retry_exc, when, options), traceback, runtime = wire
        options = {k: v if _picklable(v) else repr(v) for k, v in options.items()}
        how = (message, portable_exception(retry_exc), when, options)
        return ("R", portable_exception(exc), eta, how, traceback, runtime)
    if kind == "J" and not _picklable(wire[2]):
        reason = wire[2]
        reason = portable_exception(reason) if isinstance(reason, BaseException) else repr(reason)
        return ("J", wire[1], reason, wire[3])
    return wire


def children_of(request: Context) -> list[Any]:
    """The results a task sent while running, as Celery's ``as_tuple()`` values."""
    found = []
    for child in request.children:
        as_tuple = getattr(child, "as_tuple", None)
        found.append(as_tuple() if callable(as_tuple) else ((str(child), None), None))
    return found


# -- memory ------------------------------------------------------------------------------------
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def resident_kib() -> int:
    """This process's resident memory in KiB (``/proc/self/statm``; else peak ``ru_maxrss``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


# -- the child process -------------------------------------------------------------------------
@dataclass
class ChildSpec:
    """Everything a child needs, known before the fork."""

    number: int
    job_fd: int
    result_fd: int
    parent_pid: int
    tasks: Mapping[str, Task[Any, Any]]
    max_tasks: int | None = None
    max_memory_kib: int | None = None
    #: file descriptors of the parent the child must close
    close_fds: Sequence[int] = field(default_factory=list)
    #: whether the garbage collector runs in the child (the worker's setting)
    gc_enabled: bool = True


def child_main(spec: ChildSpec) -> NoReturn:
    """Entered in the child right after ``fork()``; runs jobs, then exits (never returns)."""
    code = 1
    try:
        _setup(spec)
        code = _Child(spec).serve()
    except BaseException:  # never unwind into the parent's stack
        with contextlib.suppress(BaseException):
            logger.exception("Pool process %d failed", os.getpid())
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _setup(spec: ChildSpec) -> None:
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)  # the parent's event loop owns that pipe
    for name in ("SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGALRM"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    die_with_parent(spec.parent_pid)
    if spec.gc_enabled:
        gc.enable()
    import multiprocessing.process

    multiprocessing.process.current_process().name = f"ForkPoolWorker-{spec.number}"


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies (else: end-of-file on the job pipe)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


class _Child:
    """The job loop of one child process."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.tasks_run = 0
        self.reader = FrameReader()
        self.pending: list[tuple[int, bytes]] = []
        self.in_task = False
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.in_task:
            raise SoftTimeLimitExceeded()

    def serve(self) -> int:
        signals.worker_process_init.send(sender=None)
        while True:
            job = self._next()
            if job is None:
                break
            seq, body = job
            wire, children = self._run(body)
            self.tasks_run += 1
            exiting = self._exiting()
            self._send(seq, wire, children, exiting)
            if exiting:
                break
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        return 0

    def _next(self) -> tuple[int, bytes] | None:
        while not self.pending:
            data = os.read(self.spec.job_fd, 1 << 16)
            if not data:
                return None  # the parent closed the pipe (or died): time to go
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def _run(self, body: bytes) -> tuple[tuple[Any, ...], list[Any]]:
        started = time.monotonic()
        try:
            name, state, soft = pickle.loads(body)
            request = context_from_state(state)
            task = self._task(name)
        except Exception as exc:
            return to_wire(Failed(exc, format_exc(exc), 0.0)), []
        if soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        self.in_task = True
        try:
            outcome = execute(task, request)
        except BaseException as exc:  # SoftTimeLimitExceeded outside the body, SystemExit
            outcome = Failed(exc, format_exc(exc), time.monotonic() - started)
        finally:
            self.in_task = False
            if soft:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return to_wire(outcome), children_of(request)

    def _task(self, name: str) -> Task[Any, Any]:
        task = self.spec.tasks.get(name)
        if task is None:
            raise NotRegistered(name)
        return task

    def _exiting(self) -> str | None:
        spec = self.spec
        if spec.max_tasks and self.tasks_run >= spec.max_tasks:
            return f"ran {self.tasks_run} tasks (max_tasks_per_child={spec.max_tasks})"
        if spec.max_memory_kib:
            used = resident_kib()
            if used > spec.max_memory_kib:
                return f"uses {used} KiB (max_memory_per_child={spec.max_memory_kib} KiB)"
        return None

    def _send(self, seq: int, wire: tuple[Any, ...], children: list[Any], why: str | None) -> None:
        if wire[0] in "FR":  # exceptions must also unpickle in the parent
            wire = portable(wire)
        try:
            data = frame(seq, (wire, children, why))
        except Exception:
            try:
                data = frame(seq, (portable(wire), children, why))
            except Exception as exc:
                error = EncodeError(f"The outcome of the task could not be pickled: {exc!r}")
                data = frame(seq, (("F", error, "", 0.0), [], why))
        write_all(self.spec.result_fd, data)


def describe_status(status: int | None) -> str:
    """``"signal 9 (SIGKILL)"`` / ``"exitcode 1"`` from a ``waitpid`` status."""
    if status is None:
        return "an unknown exit status"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"signal {-code} ({name})"
    return f"exitcode {code}"


__all__ = [
    "HEADER",
    "ChildSpec",
    "FrameReader",
    "PoolRemoteError",
    "child_main",
    "context_state",
    "describe_status",
    "die_with_parent",
    "frame",
    "from_wire",
    "portable",
    "portable_exception",
    "to_wire",
]
