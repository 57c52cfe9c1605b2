"""Wake-ups across processes for the SQLite drivers: Unix datagram sockets, one per waiter.

How it works
    A thread that is about to wait (a consumer's idle ``fetch``, a client's ``wait_for_change``)
    *listens*: it binds a Unix datagram socket in the wake directory of the database file (see
    below), named ``<channel>.<pid>.<n>.<random>`` (one hard link more per further channel),
    and only then looks at the database once more before it waits on the socket. A writer,
    after its transaction has committed, lists the directory and sends one byte
    (non-blocking) to listeners of the channels it wrote to. The listener removes its names when
    it stops waiting, so only threads that are waiting receive anything. Listening before
    looking means no wake is lost between the look and the wait: a commit after the look lists
    the directory after the socket was bound.

Channels
    ``m<hash of the queue>`` (``message_channel``): a publish of *n* messages wakes at most *n*
    of the queue's consumers (chosen at random; this process's own first), not all of them, so
    that idle consumers do not stampede for one message. A consumer passes a wake on (the
    transport does, see ``Listener.unused``) when it may not have used it and messages are
    still ready.
    ``r<hash of the key>`` (``result_channel``): a result write wakes every waiter of that key.

    Listeners of this process are also known in memory: writes of this process and ``poke``
    (which interrupts a wait, e.g. at shutdown) reach them without the file system, and still do
    when the wake directory cannot be used.

Failures cost latency, never correctness
    Waiters keep polling the database with backoff as a safety net. Sending never raises: a gone
    socket (ENOENT) is skipped for the next listener, a full one (EAGAIN) already has a wake
    pending, and a stale one left by a killed process (ECONNREFUSED) is removed by the writer. A
    directory that cannot be created or used leaves only the in-process wake-ups. The first use
    in a process sweeps the user directory (``sweep``): sockets nobody is bound to, and then
    empty directories (those of database files that are gone), are removed.

The wake directory
    ``/dev/shm/celeriac-<uid>/<device>.<inode of the database file>/`` (``/tmp`` where there is
    no ``/dev/shm``): in memory, so binding and removing a socket costs microseconds, not a
    journal write; short, so socket paths stay within their ~100 bytes; and named by the file's
    identity, so every path to the file (relative, symlinked, bind-mounted) finds the same
    directory. ``celeriac-<uid>`` is private to the user: processes of different users, or in
    containers that do not share ``/dev/shm``, find each other's writes by polling only. Without
    AF_UNIX (Windows) there are no wake-ups across processes.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import os
import random
import secrets
import socket
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

#: longest socket path we bind (sun_path is 108 bytes on Linux, 104 on macOS, with a NUL)
ADDRESS_MAX = 100
#: longest name of a listener's socket (channel, pid, counter, random part, dots)
_NAME_MAX = 40
_HAVE_UNIX = hasattr(socket, "AF_UNIX") and hasattr(os, "getuid")
_WAKE = b"!"
#: user directories swept of stale sockets by this process
_swept: set[Path] = set()
#: ``notify`` counts: wake this many listeners of a channel (None: all of them)
Wanted = Mapping[str, int | None]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()


def message_channel(queue: str) -> str:
    """The channel of one queue: ``m`` and 10 hex digits of its name's hash."""
    return "m" + _digest(queue)


def result_channel(key: str) -> str:
    """The channel of one result key: ``r`` and 10 hex digits of its hash."""
    return "r" + _digest(key)


def channel_of(name: str) -> str:
    """The channel of a socket name in the wake directory (the part before the first dot)."""
    return name.partition(".")[0]


def _user_directory() -> Path | None:
    """``/dev/shm/celeriac-<uid>`` (or under ``/tmp``), made private; None if unusable."""
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path("/tmp")
    path = base / f"celeriac-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None  # not ours: someone else made it
    if path not in _swept:
        _swept.add(path)
        with contextlib.suppress(OSError):
            sweep(path)
    return path


def sweep(user: Path) -> None:
    """Remove the sockets that killed processes left (nobody is bound to them), then the
    directories left empty: also those of database files that are gone, which no writer would
    clean. Once per process; a connect tests a socket without waking anyone."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with os.scandir(user) as directories:
            for directory in directories:
                if directory.is_dir(follow_symlinks=False):
                    _sweep_directory(probe, directory.path)
    finally:
        probe.close()


def _sweep_directory(probe: socket.socket, path: str) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    probe.connect(entry.path)
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except OSError:
                pass
    with contextlib.suppress(OSError):
        os.rmdir(path)  # only if empty; a listener that was about to bind makes it again


class Listener:
    """One waiting thread's socket; ``wait`` returns early when it is woken. A context manager.

    After ``close``, ``unused`` tells whether a wake came that ``wait`` did not return for.
    """

    __slots__ = ("_hub", "_pid", "_poke_to", "_poker", "channels", "names", "sock", "unused")

    def __init__(self, hub: WakeHub, channels: Sequence[str], *, remote: bool) -> None:
        self._hub = hub
        self.channels = tuple(channels)
        self.unused = False
        self._pid = os.getpid()
        #: its names in the wake directory (none: in-process wake-ups only)
        self.names: list[str] = []
        self._poke_to = ""
        #: the other end of a socket pair, for a listener that is not bound
        self._poker: socket.socket | None = None
        bound = hub.bind(self.channels) if remote else None
        if bound is not None:
            self.sock, self.names, self._poke_to = bound
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
        except OSError:  # unusable socket (never seen): fall back to polling, never spin
            time.sleep(max(timeout, 0.0))
            return False
        self._drain()
        return True

    def _drain(self) -> bool:
        """Read what is pending without waiting; whether there was anything."""
        found = False
        with contextlib.suppress(OSError):
            self.sock.setblocking(False)
            while self.sock.recv(64):
                found = True
        return found

    def poke(self) -> bool:
        """Wake this listener (from any thread of this process); whether it was sent."""
        try:
            if self._poker is not None:
                self._poker.send(_WAKE)
            else:
                self._hub.sender().sendto(_WAKE, self._poke_to)
        except BlockingIOError:
            return True  # full: a wake is pending already
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Stop listening: unregister, remove the names (no wake comes after), close."""
        self._hub.unregister(self)
        directory = self._hub.directory
        if self._pid == os.getpid() and directory is not None:
            for name in self.names:
                with contextlib.suppress(OSError):
                    os.unlink(directory / name)
        self.unused = self._drain()
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
        self._directory: Path | None = None
        #: no wake directory for this process (not AF_UNIX, or the user directory is unusable)
        self._disabled = not _HAVE_UNIX
        self._lock = threading.Lock()
        self._local: dict[str, list[Listener]] = {}
        self._own: set[str] = set()
        self._counter = itertools.count(1)
        self._sender: socket.socket | None = None
        self._sender_pid = 0

    @property
    def directory(self) -> Path | None:
        """The wake directory; None while the database file does not exist (or no AF_UNIX)."""
        found = self._directory
        if found is not None or self._disabled:
            return found
        try:
            info = os.stat(self.database)
        except OSError:
            return None  # not made yet: ask again next time
        try:
            user = _user_directory()
        except OSError:
            user = None
        found = None if user is None else user / f"{info.st_dev:x}.{info.st_ino:x}"
        if found is None or len(os.fsencode(str(found))) + 1 + _NAME_MAX > ADDRESS_MAX:
            self._disabled = True
            return None
        self._directory = found
        atexit.register(self.release)
        return found

    def sender(self) -> socket.socket:
        """This process's unbound, non-blocking socket that sends the wakes."""
        sock = self._sender
        if sock is None or self._sender_pid != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sender, self._sender_pid = sock, os.getpid()
        return sock

    def bind(self, channels: Sequence[str]) -> tuple[socket.socket, list[str], str] | None:
        """A socket bound in the wake directory under one name per channel (hard links):
        (socket, names, address of the first); None if that cannot be done."""
        directory = self.directory
        if directory is None or not channels:
            return None
        suffix = f"{os.getpid():x}.{next(self._counter):x}.{secrets.token_hex(3)}"
        names = [f"{channel}.{suffix}" for channel in channels]
        address = str(directory / names[0])
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for _ in range(3):
            try:
                sock.bind(address)
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    directory.mkdir(exist_ok=True)
                continue
            except OSError:
                break
            linked = names[:1]
            for name in names[1:]:
                with contextlib.suppress(OSError):  # that channel then relies on polling
                    os.link(address, directory / name)
                    linked.append(name)
            return sock, linked, address
        sock.close()
        return None

    def release(self) -> None:
        """Remove the wake directory if it is empty (when a driver closes; best effort)."""
        directory = self._directory
        if directory is not None and not self._own:
            with contextlib.suppress(OSError):
                directory.rmdir()

    # -- listeners of this process -------------------------------------------------------------
    def listen(self, channels: Sequence[str], *, remote: bool = True) -> Listener:
        """Start listening on ``channels`` (``remote=False``: wakes from this process only)."""
        return Listener(self, channels, remote=remote)

    def register(self, listener: Listener) -> None:
        with self._lock:
            for channel in listener.channels:
                self._local.setdefault(channel, []).append(listener)
            self._own.update(listener.names)

    def unregister(self, listener: Listener) -> None:
        with self._lock:
            for channel in listener.channels:
                with contextlib.suppress(KeyError, ValueError):
                    self._local[channel].remove(listener)
            self._own.difference_update(listener.names)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's listeners are not ours (their files stay)."""
        self._lock = threading.Lock()
        self._local = {}
        self._own = set()

    # -- writers -------------------------------------------------------------------------------
    def notify(self, wanted: Wanted, *, remote: bool = True) -> None:
        """Wake listeners: ``wanted`` maps a channel to how many (None: all); this process's
        listeners first, then (``remote``) other processes'. Never raises."""
        with self._lock:
            local = {ch: list(self._local.get(ch, ())) for ch in wanted}
            own = set(self._own)
        left: dict[str, int | None] = {}
        for channel, count in wanted.items():
            woken = 0
            for listener in local[channel]:
                if count is not None and woken >= count:
                    break
                if listener.poke():
                    woken += 1
            if count is None or woken < count:
                left[channel] = None if count is None else count - woken
        if remote and left and _HAVE_UNIX:
            with contextlib.suppress(OSError):
                self._send_remote(left, own)

    def _send_remote(self, wanted: dict[str, int | None], own: set[str]) -> None:
        directory = self.directory
        if directory is None:
            return
        groups: dict[str, list[str]] = {}
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    channel = channel_of(entry.name)
                    if channel in wanted and entry.name not in own:
                        groups.setdefault(channel, []).append(entry.name)
        except FileNotFoundError:
            return
        for channel, names in groups.items():
            self._send_some(directory, names, wanted[channel])

    def _send_some(self, directory: Path, names: list[str], count: int | None) -> None:
        """Send to ``count`` of ``names`` (all if None), in random order."""
        if count is not None and count < len(names):
            random.shuffle(names)
        sent = 0
        for name in names:
            if count is not None and sent >= count:
                return
            try:
                self.sender().sendto(_WAKE, f"{directory}/{name}")
                sent += 1
            except BlockingIOError:
                sent += 1  # full: a wake is pending there already
            except ConnectionRefusedError:  # nobody bound: left by a process that was killed
                self._remove_stale(directory / name)
            except OSError:  # gone (ENOENT) or anything else: the next one; polling covers it
                pass

    @staticmethod
    def _remove_stale(path: Path) -> None:
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
