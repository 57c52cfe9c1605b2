"""The prefork pool's fork server: one small process that forks the pool's children.

Why
    The worker's main process has threads (the transport's and the result store's I/O threads)
    that may be inside a C library at any moment: inside a SQLite transaction, SQLite's
    in-process lock bookkeeping says "locked", and a child forked at that instant inherits it and
    waits forever for a lock no one will release (measured: 7 hung children in 1000 recycles
    under load). So the worker forks once, when the pool starts and before its I/O begins, a
    *fork server* that stays single-threaded and never does I/O of its own, and every child of
    the pool (the first ones and every replacement) is forked from it. The children still have
    the app, its settings and its tasks as they were when the pool started.

Protocol (a ``SOCK_SEQPACKET`` socket pair; each message one pickled tuple)
    - worker -> server: ``("fork", number)`` with the child's two pipe ends attached
      (``SCM_RIGHTS``), ``("kill", number, signum)``; closing the socket ends the server, which
      kills the children left (``SIGKILL``), reaps them and exits.
    - server -> worker: ``("forked", number, pid)``, ``("exited", number, status)`` (the
      ``waitpid`` status; the server is the children's parent and reaps them).
    Children are named by number, so a ``kill`` never reaches a process that reused a pid.

Lifetime: the server and every child die with their parent (``PR_SET_PDEATHSIG``; elsewhere,
end-of-file on the socket / the job pipe), so killing the worker leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import select
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.pools.prefork_child import ChildSpec, child_main, die_with_parent

logger = logging.getLogger("celeriac.worker.pool")

#: the largest message either side sends (a few small values)
MESSAGE_MAX = 4096


@dataclass
class ServerEvents:
    """What the worker is told: a child forked, a child exited, the server gone."""

    forked: Callable[[int, int], None]
    exited: Callable[[int, int | None], None]
    lost: Callable[[], None]


class ForkServer:
    """The worker's end of the fork server (see the module docstring)."""

    def __init__(self, template: ChildSpec, events: ServerEvents) -> None:
        self.template = template
        self.events = events
        self.pid: int | None = None
        self._sock: socket.socket | None = None
        self._closed = False

    def start(self) -> None:
        """Fork the server (call it before the worker's threads start working)."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (OSError, AttributeError) as exc:  # macOS has no SOCK_SEQPACKET Unix sockets
            raise ImproperlyConfigured(
                f"The prefork pool needs Unix SOCK_SEQPACKET sockets ({exc}); use -P threads"
            ) from None
        template = replace(self.template, gc_enabled=gc.isenabled())
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the server process
            ours.close()
            serve(theirs, template)
        theirs.close()
        ours.settimeout(5.0)  # a send never blocks the worker's loop for long
        self.pid, self._sock = pid, ours

    @property
    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def fork(self, number: int, job_fd: int, result_fd: int) -> bool:
        """Ask for child ``number`` on these pipe ends; False when the server is gone."""
        return self._send(("fork", number), [job_fd, result_fd])

    def kill(self, number: int, signum: int) -> bool:
        return self._send(("kill", number, signum), [])

    def _send(self, message: tuple[Any, ...], fds: list[int]) -> bool:
        if self._sock is None or self._closed:
            return False
        try:
            socket.send_fds(self._sock, [pickle.dumps(message)], fds)
        except OSError:
            return False
        return True

    def on_readable(self) -> None:
        """Read one message from the server (called by the event loop)."""
        assert self._sock is not None
        try:
            data = self._sock.recv(MESSAGE_MAX)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self._closed = True
            self.events.lost()
            return
        message = pickle.loads(data)
        if message[0] == "forked":
            self.events.forked(message[1], message[2])
        elif message[0] == "exited":
            self.events.exited(message[1], message[2])

    def close(self) -> None:
        """End the server: it kills the children left, reaps them and exits."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()

    def reap(self, block: bool) -> bool:
        """Reap the server process; True once it has exited."""
        if self.pid is None:
            return True
        try:
            pid, _ = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid = self.pid
        if pid:
            self.pid = None
        return pid != 0

    def terminate(self) -> None:
        """Kill the server (its children die with it)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


# -- the server process ------------------------------------------------------------------------
def serve(sock: socket.socket, template: ChildSpec) -> NoReturn:
    """The fork server's main loop (never returns)."""
    code = 1
    try:
        code = _Server(sock, template).run()
    except BaseException:
        with contextlib.suppress(BaseException):
            logger.exception("The prefork pool's fork server failed")
    finally:
        os._exit(code)


class _Server:
    def __init__(self, sock: socket.socket, template: ChildSpec) -> None:
        self.sock = sock
        self.template = template
        self.parent = os.getppid()
        self.children: dict[int, int] = {}  # number -> pid
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        sock.setblocking(True)
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for name in ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"):
            signum = getattr(signal, name, None)
            if signum is not None:  # the worker stops the server through the socket
                signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, _noop)
        signal.set_wakeup_fd(self.wake_w)
        die_with_parent(self.parent)
        gc.freeze()  # what the children share with the server stays shared (copy-on-write)
        gc.disable()  # the server allocates next to nothing; children restore the setting

    def run(self) -> int:
        sock = self.sock.fileno()
        while True:
            ready, _, _ = select.select([sock, self.wake_r], [], [])
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 1024)
                self._reap()
            if sock in ready and not self._command():
                break
        self._finish()
        return 0

    def _command(self) -> bool:
        """Handle one message; False at end-of-file (the worker closed the socket or died)."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MESSAGE_MAX, 2)
        except OSError:
            return False
        if not data:
            return False
        message = pickle.loads(data)
        if message[0] == "fork" and len(fds) == 2:
            self._fork(message[1], fds[0], fds[1])
        elif message[0] == "kill":
            pid = self.children.get(message[1])
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, message[2])
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return True

    def _fork(self, number: int, job_fd: int, result_fd: int) -> None:
        spec = replace(
            self.template,
            number=number,
            job_fd=job_fd,
            result_fd=result_fd,
            parent_pid=os.getpid(),
            close_fds=[self.sock.fileno(), self.wake_r, self.wake_w],
        )
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: the worker counts it as lost
            logger.error("The prefork pool could not fork a child: %r", exc)
            self._tell(("exited", number, None))
            return
        if pid == 0:  # pragma: no cover - the child
            child_main(spec)
        self.children[number] = pid
        self._tell(("forked", number, pid))

    def _reap(self) -> None:
        by_pid = {pid: number for number, pid in self.children.items()}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            number = by_pid.get(pid)
            if number is not None:
                del self.children[number]
                self._tell(("exited", number, status))

    def _tell(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(pickle.dumps(message))

    def _finish(self) -> None:
        """The worker is done with us: no child outlives the server."""
        for pid in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children.values()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _noop(signum: int, frame: Any) -> None:
    """SIGCHLD only needs to wake ``select`` (through the wake-up pipe)."""
