"""Wake-ups across processes for the SQLite drivers: Unix datagram sockets next to the file.

How it works
    A thread that is about to wait (a consumer's idle ``fetch``, a client's ``wait_for_change``)
    *listens*: it binds a Unix datagram socket named ``<channel>.<pid>.<n>.<random>`` in the wake
    directory of the database, ``<database>-wake/``, and only then looks at the database once
    more before it waits on the socket. A writer, after its transaction has committed, lists the
    directory and sends one byte (non-blocking) to every socket of the channels it wrote to:
    ``m`` for messages, ``r<hash of the key>`` for a result key (see ``result_channel``). The
    listener removes its socket when it stops waiting, so only threads that are waiting receive
    anything. Listening before looking means no wake is lost between the look and the wait: a
    commit after the look lists the directory after the socket was bound.

    Listeners of this process are also known in memory: writes of this process and ``poke``
    (which interrupts a wait, e.g. at shutdown) reach them without the file system, and still do
    when the wake directory cannot be used.

Failures cost latency, never correctness
    Waiters keep polling the database with backoff as a safety net. Sending never raises: a gone
    socket (ENOENT) is skipped, a full one (EAGAIN) already has a wake pending, and a stale one
    left by a killed process (ECONNREFUSED) is removed by the writer. A directory that cannot
    be created or used leaves only the in-process wake-ups.

Addresses
    A socket address holds about 100 bytes. When ``<database>-wake/<name>`` does not fit, Linux
    reaches the directory as ``/proc/self/fd/<fd>/<name>`` (an open descriptor of it); other
    systems use ``/tmp/celeriac-<hash of the database path>.wake`` instead. Without AF_UNIX
    (Windows) there are no wake-ups across processes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import secrets
import socket
import stat
import sys
import threading
from collections.abc import Collection
from pathlib import Path
from types import TracebackType

#: the channel of queued messages (the broker)
MESSAGES = "m"
#: longest socket path we bind (sun_path is 108 bytes on Linux, 104 on macOS, with a NUL)
ADDRESS_MAX = 100
#: longest name of a listener's socket (channel, pid, counter, random part, dots)
_NAME_MAX = 40
_PROC_FD = Path("/proc/self/fd")
_HAVE_UNIX = hasattr(socket, "AF_UNIX")
_WAKE = b"!"


def result_channel(key: str) -> str:
    """The channel of one result key: ``r`` and 10 hex digits of its hash."""
    return "r" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()


def channel_of(name: str) -> str:
    """The channel of a socket name in the wake directory (the part before the first dot)."""
    return name.partition(".")[0]


@functools.cache
def _proc_fd_usable() -> bool:
    """Whether long socket paths can go through ``/proc/self/fd`` (Linux with /proc)."""
    return sys.platform == "linux" and _PROC_FD.is_dir()


def _fallback_directory(database: Path) -> Path:
    digest = hashlib.blake2b(os.fsencode(database), digest_size=8).hexdigest()
    return Path("/tmp") / f"celeriac-{digest}.wake"


class Listener:
    """One waiting thread's socket; ``wait`` returns early when it is woken. A context manager."""

    __slots__ = ("_hub", "_pid", "_poke_to", "_poker", "channel", "name", "path", "sock")

    def __init__(self, hub: WakeHub, channel: str, remote: bool) -> None:
        self._hub = hub
        self.channel = channel
        self._pid = os.getpid()
        self.name = ""
        #: where it is bound in the wake directory (None: in-process wake-ups only)
        self.path: Path | None = None
        self._poke_to = ""
        #: the other end of a socket pair, for a listener that is not bound
        self._poker: socket.socket | None = None
        bound = hub.bind(channel) if remote else None
        if bound is not None:
            self.sock, self.name, self.path, self._poke_to = bound
        else:
            self.sock, poker = socket.socketpair()
            poker.setblocking(False)
            self._poker = poker
        hub.register(self)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a wake; True if woken (pending wakes are drained)."""
        sock = self.sock
        try:
            sock.settimeout(max(timeout, 0.0))
            sock.recv(64)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return False
        except OSError:  # closed under us: behave as a wake, the caller looks again
            return True
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            while sock.recv(64):
                pass
        return True

    def poke(self) -> None:
        """Wake this listener (from any thread of this process)."""
        with contextlib.suppress(OSError):
            if self._poker is not None:
                self._poker.send(_WAKE)
            else:
                self._hub.sender().sendto(_WAKE, self._poke_to)

    def close(self) -> None:
        """Stop listening: unregister, remove the socket file, close. Idempotent."""
        self._hub.unregister(self)
        if self.path is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
        self.sock.close()
        if self._poker is not None:
            self._poker.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WakeHub:
    """The wake directory of one database file, as seen by this process (see the module doc)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.directory = Path(f"{database}-wake")
        if _HAVE_UNIX and sys.platform != "linux" and not self._fits(str(self.directory)):
            self.directory = _fallback_directory(database)
        self._lock = threading.Lock()
        self._local: dict[str, set[Listener]] = {}
        self._own: set[str] = set()
        self._counter = itertools.count(1)
        self._sender: socket.socket | None = None
        self._sender_pid = 0
        self._dirfd: int | None = None
        self._dirfd_pid = 0

    @staticmethod
    def _fits(prefix: str) -> bool:
        return len(os.fsencode(prefix)) + 1 + _NAME_MAX <= ADDRESS_MAX

    # -- addresses -----------------------------------------------------------------------------
    def _prefix(self, *, reopen: bool = False) -> str:
        """The directory as a socket address prefix (``/proc/self/fd/N`` for long paths)."""
        direct = str(self.directory)
        if self._fits(direct) or not _proc_fd_usable():
            return direct
        with self._lock:
            if self._dirfd is not None and (reopen or self._dirfd_pid != os.getpid()):
                if self._dirfd_pid == os.getpid():
                    with contextlib.suppress(OSError):
                        os.close(self._dirfd)
                self._dirfd = None
            if self._dirfd is None:
                self._dirfd = os.open(direct, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                self._dirfd_pid = os.getpid()
            return f"{_PROC_FD}/{self._dirfd}"

    def sender(self) -> socket.socket:
        """This process's unbound, non-blocking socket that sends the wakes."""
        sock = self._sender
        if sock is None or self._sender_pid != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sender, self._sender_pid = sock, os.getpid()
        return sock

    def bind(self, channel: str) -> tuple[socket.socket, str, Path, str] | None:
        """A socket bound in the wake directory: (socket, name, path, address); None if not."""
        if not _HAVE_UNIX:
            return None
        name = f"{channel}.{os.getpid():x}.{next(self._counter):x}.{secrets.token_hex(3)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for attempt in range(3):
            try:
                address = f"{self._prefix(reopen=attempt > 0)}/{name}"
                sock.bind(address)
                return sock, name, self.directory / name, address
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    self.directory.mkdir(parents=True, exist_ok=True)
            except OSError:
                break
        sock.close()
        return None

    # -- listeners of this process -------------------------------------------------------------
    def listen(self, channel: str, *, remote: bool = True) -> Listener:
        """Start listening on ``channel`` (``remote=False``: wakes from this process only)."""
        return Listener(self, channel, remote)

    def register(self, listener: Listener) -> None:
        with self._lock:
            self._local.setdefault(listener.channel, set()).add(listener)
            if listener.name:
                self._own.add(listener.name)

    def unregister(self, listener: Listener) -> None:
        with self._lock:
            self._local.get(listener.channel, set()).discard(listener)
            self._own.discard(listener.name)

    def poke(self, channel: str) -> None:
        """Wake the listeners of ``channel`` in this process only."""
        with self._lock:
            listeners = list(self._local.get(channel, ()))
        for listener in listeners:
            listener.poke()

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's listeners are not ours (their files stay)."""
        self._lock = threading.Lock()
        self._local = {}
        self._own = set()

    # -- writers -------------------------------------------------------------------------------
    def notify(self, channels: Collection[str], *, remote: bool = True) -> None:
        """Wake every listener of ``channels``: this process's, then (``remote``) the others'."""
        with self._lock:
            local = [lis for ch in channels for lis in self._local.get(ch, ())]
            own = set(self._own)
        for listener in local:
            listener.poke()
        if remote and _HAVE_UNIX:
            with contextlib.suppress(OSError):
                self._send_all(channels, own)

    def _send_all(self, channels: Collection[str], own: set[str]) -> None:
        try:
            entries = [
                e.name
                for e in os.scandir(self.directory)
                if channel_of(e.name) in channels and e.name not in own
            ]
        except FileNotFoundError:
            return
        if not entries:
            return
        prefix = self._prefix()
        missing = 0
        for name in entries:
            missing += self._send(prefix, name)
        if missing == len(entries) and prefix != str(self.directory):
            # every one vanished: perhaps the directory was made anew under our descriptor
            prefix = self._prefix(reopen=True)
            for name in entries:
                self._send(prefix, name)

    def _send(self, prefix: str, name: str) -> int:
        """Send one wake; 1 if the socket was not found, else 0."""
        try:
            self.sender().sendto(_WAKE, f"{prefix}/{name}")
        except FileNotFoundError:
            return 1
        except ConnectionRefusedError:  # nobody bound: left by a process that was killed
            self._remove_stale(name)
        except OSError:  # EAGAIN: a wake is pending already; anything else: polling covers it
            pass
        return 0

    def _remove_stale(self, name: str) -> None:
        path = self.directory / name
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)


_hubs: dict[str, WakeHub] = {}
_hubs_lock = threading.Lock()


def wake_hub(database: Path) -> WakeHub:
    """The process-wide ``WakeHub`` of one database file (an absolute path)."""
    key = str(database)
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None:
            hub = _hubs[key] = WakeHub(database)
        return hub


def _reset_after_fork() -> None:
    global _hubs_lock
    _hubs_lock = threading.Lock()
    for hub in _hubs.values():
        hub.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
