"""SQLite plumbing shared by the SQLite broker and result store: the file path of a
``sqlite://`` URL, per-thread connections in WAL mode with busy retries (``SQLiteDatabase``), the
layout version (``PRAGMA user_version``) and backoff. Wake-ups across processes are in
``celeriac._internal.wake``.

It lives here, below both drivers, because transports and backends are independent layers.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from celeriac.exceptions import ImproperlyConfigured, OperationalError

T = TypeVar("T")

DEFAULT_FILENAME = "celeriac.sqlite3"
#: layout version of a Celeriac SQLite file (``PRAGMA user_version``), broker and results alike
SCHEMA_VERSION = 1

_MAX_REASON = 1000
#: first and longest pause between two attempts at a locked file (seconds)
BUSY_PAUSE_MIN, BUSY_PAUSE_MAX = 0.0001, 0.005


def sqlite_path(url: str) -> Path:
    """The database file named by a ``sqlite://`` URL (relative paths stay relative).

    >>> sqlite_path("sqlite:///data/q.db"), sqlite_path("sqlite:////tmp/q.db")
    (PosixPath('data/q.db'), PosixPath('/tmp/q.db'))
    >>> sqlite_path("sqlite://")
    PosixPath('celeriac.sqlite3')
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.lower().endswith("sqlite"):
        raise ImproperlyConfigured(f"{url!r} is not a sqlite:// URL (sqlite:///path/to/file.db)")
    if "?" in rest or "#" in rest:
        raise ImproperlyConfigured(
            f"{url!r}: sqlite URLs take no query string; use broker_transport_options"
        )
    if rest and not rest.startswith("/"):
        raise ImproperlyConfigured(
            f"{url!r}: sqlite URLs have no host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    path = unquote(rest[1:])
    if not path:
        return Path(DEFAULT_FILENAME)
    if path == ":memory:":
        raise ImproperlyConfigured(f"{url!r}: an in-memory SQLite database cannot be shared")
    return Path(path)


def one_line(reason: str, limit: int = _MAX_REASON) -> str:
    """``reason`` on one line, at most ``limit`` characters."""
    text = " ".join(reason.splitlines()).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flag(value: object) -> bool:
    """A boolean option that may be written as text (``"false"``, ``"0"``, ``"off"``, ``"no"``).

    >>> flag(True), flag("off"), flag(0), flag("yes")
    (True, False, False, True)
    """
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def backoff(delay: float, low: float, high: float) -> float:
    """The next idle pause: double ``delay``, within [``low``, ``high``]."""
    return max(low, min(delay * 2, high))


_schemas_ready: set[tuple[str, str]] = set()


# -- connections ---------------------------------------------------------------------------------
class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (``SQLiteDatabase.close`` finds them all)."""


class _ThreadConnection:
    """A thread's connection; closed when the thread ends and its thread-local data goes.

    (A ``sqlite3.Connection`` sits in a reference cycle with its statement cache, so without
    this it would hold its file descriptor until the garbage collector runs.)
    """

    __slots__ = ("conn", "epoch", "pid")

    def __init__(self, conn: sqlite3.Connection, pid: int, epoch: int) -> None:
        self.conn, self.pid, self.epoch = conn, pid, epoch

    def __del__(self) -> None:
        if self.pid == os.getpid():  # never close a connection inherited over fork
            with contextlib.suppress(Exception):
                self.conn.close()


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_BUSY/SQLITE_LOCKED (another process holds a lock)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (5, 6)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteDatabase:
    """One database file: a connection per thread (per process), WAL, busy timeout and retries.

    ``schema`` is a list of idempotent DDL statements run once per process on first use.
    """

    def __init__(
        self,
        path: Path,
        *,
        schema: Sequence[str],
        name: str,
        busy_timeout: float = 10.0,
        synchronous: str = "NORMAL",
    ) -> None:
        self.path = path
        self.schema = tuple(schema)
        self.name = name
        self.busy_timeout = busy_timeout
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ImproperlyConfigured(f"synchronous={synchronous!r}: OFF, NORMAL, FULL or EXTRA")
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._epoch = 0

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema made) on first use."""
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid() and held.epoch == self._epoch:
            return held.conn
        if held is not None and held.pid != os.getpid():
            held.pid = -1  # inherited over fork: leave it alone, the parent still uses the file
        conn = self._retry(self._open)
        self._local.held = _ThreadConnection(conn, os.getpid(), self._epoch)
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path),
            timeout=0,  # busy: fail at once, ``_retry`` waits (SQLite's own waits are coarse)
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        try:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA journal_size_limit=67108864")  # the WAL shrinks back to 64 MiB
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._all.add(conn)
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        key = (str(self.path), self.name)
        if key in _schemas_ready:
            return
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ImproperlyConfigured(
                    f"{self.path} has Celeriac layout version {version}; this version of "
                    f"Celeriac knows up to {SCHEMA_VERSION}: upgrade Celeriac or use another file"
                )
            for statement in self.schema:
                conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        _schemas_ready.add(key)

    def _retry(self, func: Callable[[], T]) -> T:
        """Run ``func``, retrying while the file is locked (up to ``busy_timeout``).

        Write transactions are short (well under a millisecond), so the pauses start at 0.1 ms
        and double up to ``BUSY_PAUSE_MAX``, with jitter so that waiters do not retry in step.
        (SQLite's own busy handler sleeps 1, 2, 5, 10 ms ... which costs milliseconds per
        conflict between a few busy processes.)
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = BUSY_PAUSE_MIN
        while True:
            try:
                return func()
            except sqlite3.Error as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise OperationalError(f"SQLite {self.path}: {exc}") from exc
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, BUSY_PAUSE_MAX)

    def read(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``func(connection)`` outside any write lock (each statement sees a snapshot)."""
        return self._retry(lambda: func(self.connection()))

    def write(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``func(connection)`` in one ``BEGIN IMMEDIATE`` transaction, retried when busy."""

        def attempt() -> T:
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = func(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return self._retry(attempt)

    def close(self) -> None:
        """Close every connection of this object (all threads). Later calls open new ones."""
        with self._lock:
            self._epoch += 1
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()
