"""SQLite result store: the embedded default, one file shared safely by several processes.

URL
    ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``, ``sqlite://`` alone (the file
    ``celeriac.sqlite3`` in the working directory), and Celery's ``db+sqlite:///...`` spelling.
    It may be the broker's file: the tables do not overlap.

Options (``result_backend_transport_options``)
    ``busy_timeout`` (s, default 10), ``synchronous`` (default ``NORMAL``) and ``wake`` (default
    True) as for the broker; ``polling_interval`` (s, default 0.1): the longest pause of
    ``wait_for_change`` between two reads (pauses start at 2 ms and double); ``cleanup_every``
    (default 1000): expired rows are deleted after that many writes of this process (and on its
    first write), so no beat is needed; ``cleanup()`` does it at once.

Table (created on first use; ``PRAGMA user_version`` as for the broker)::

    celeriac_results
      key TEXT PRIMARY KEY     e.g. "celery-task-meta-<id>"
      value BLOB NOT NULL      the record as the ResultBackend serialised it
      expires_at REAL          Unix time; NULL = never. Index on it WHERE it is not NULL

Guarantees
    Writes are short ``BEGIN IMMEDIATE`` transactions in WAL mode (readers never wait). An expired
    row is invisible to ``get``/``mget``/``incr`` before it is deleted. ``incr`` is atomic across
    processes; the counter is stored as ASCII digits, as Redis does. ``wait_for_change`` does
    not spin: it binds a Unix datagram socket for its key in the file's wake directory (see
    ``celeriac.transports.sqlite`` and ``celeriac._internal.wake``), reads once more, and waits;
    a committed ``set``/``set_many``/``incr``/``delete`` of that key, in any process, sends it
    one byte (about a millisecond from commit to return), and it still reads after pauses
    that double up to ``polling_interval`` in case a wake is lost.

Chord joins (``join_add_many``, one transaction for a batch of adds)
    Rows of the same table: each member at ``<key>.j:<score, 19 digits or ~>:<member>`` (so a
    range scan in key order is score order), the member count at ``<key>.n``, and Celery's
    ``<key>.s`` (size), ``.t`` (adjustment) and ``.c`` (claim / ``done``). A member row expires
    ``result_expires`` after it was added; expired rows go with the others.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from celeriac._internal.sqlite import SQLiteDatabase, backoff, flag, sqlite_path
from celeriac._internal.wake import result_channel, wake_hub
from celeriac.backends.base import KeyValueStore
from celeriac.backends.joins import JoinAdd, JoinState, join_decision
from celeriac.exceptions import OperationalError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS celeriac_results (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        expires_at REAL)""",
    """CREATE INDEX IF NOT EXISTS celeriac_results_expires
        ON celeriac_results (expires_at) WHERE expires_at IS NOT NULL""",
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_UPSERT = (
    "INSERT INTO celeriac_results (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_CLEANUP = (
    "DELETE FROM celeriac_results WHERE rowid IN (SELECT rowid FROM celeriac_results "
    "WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)"
)
_CLEANUP_BATCH = 5000


def _expiry(expires: float | None, now: float) -> float | None:
    return None if expires is None else now + float(expires)


def _member_key(add: JoinAdd) -> str:
    score = "~" if add.score == float("inf") else f"{max(0, int(add.score)):019d}"
    return f"{add.key}.j:{score}:{add.member}"


def _live(conn: sqlite3.Connection, key: str, now: float) -> bytes | None:
    sql = f"SELECT value FROM celeriac_results WHERE key = ? AND {_LIVE}"
    row = conn.execute(sql, (key, now)).fetchone()
    return None if row is None else bytes(row[0])


def _join_add(
    conn: sqlite3.Connection, add: JoinAdd, expires: float | None, claim_seconds: float
) -> JoinState:
    """One ``JoinAdd`` inside the caller's write transaction."""
    now = time.time()
    key = add.key
    claim = _live(conn, f"{key}.c", now)
    if claim == b"done":
        return JoinState(-1, None, False)
    expires_at = _expiry(expires, now)
    count = int(_live(conn, f"{key}.n", now) or 0)
    added = _live(conn, _member_key(add), now) is None
    if added:
        conn.execute(_UPSERT, (_member_key(add), add.value, expires_at))
        count += 1
    conn.execute(_UPSERT, (f"{key}.n", str(count).encode("ascii"), expires_at))
    conn.execute(
        "UPDATE celeriac_results SET expires_at = ? WHERE key IN (?, ?)",
        (expires_at, f"{key}.s", f"{key}.t"),
    )
    size, adjust = _live(conn, f"{key}.s", now), _live(conn, f"{key}.t", now)
    total, claimable = join_decision(count, size, adjust, claim, add, added)
    if claimable:
        conn.execute(_UPSERT, (f"{key}.c", add.token.encode(), now + claim_seconds))
    return JoinState(count, total, claimable)


class SQLiteStore(KeyValueStore):
    """Key/value rows with expiry in a SQLite file (see the module docstring)."""

    schemes = ("sqlite", "db+sqlite")

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        opts = self.options
        self.path = sqlite_path(url).resolve()
        self.poll_min = 0.002
        self.poll_max = max(self.poll_min, float(opts.get("polling_interval", 0.1)))
        self.cleanup_every = max(1, int(opts.get("cleanup_every", 1000)))
        self._db = SQLiteDatabase(
            self.path,
            schema=SCHEMA,
            name="results",
            busy_timeout=float(opts.get("busy_timeout", 10.0)),
            synchronous=str(opts.get("synchronous", "NORMAL")),
        )
        #: wake waiters in other processes through sockets (``celeriac._internal.wake``)
        self.wake_ups = flag(opts.get("wake", True))
        self._hub = wake_hub(self.path)
        self._writes = 0
        self._writes_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self.mget([key])[0]

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        wanted = list(keys)

        def read(conn: sqlite3.Connection) -> dict[str, bytes]:
            now = time.time()
            found: dict[str, bytes] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT key, value FROM celeriac_results WHERE key IN ({marks}) AND {_LIVE}"
                found.update((k, bytes(v)) for k, v in conn.execute(sql, (*chunk, now)))
            return found

        values = self._db.read(read)
        return [values.get(k) for k in wanted]

    # -- writing -------------------------------------------------------------------------------
    def set(self, key: str, value: bytes, expires: float | None) -> None:
        self.set_many([(key, value, expires)])

    def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if not items:
            return
        now = time.time()
        rows = [(key, bytes(value), _expiry(expires, now)) for key, value, expires in items]
        self._db.write(lambda conn: conn.executemany(_UPSERT, rows))
        self._notify(row[0] for row in rows)
        self._written(len(rows))

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            rows = [(k,) for k in keys]
            sql = "DELETE FROM celeriac_results WHERE key = ?"
            self._db.write(lambda conn: conn.executemany(sql, rows))
            self._notify(keys)

    def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        def add(conn: sqlite3.Connection) -> int:
            now = time.time()
            sql = f"SELECT value, expires_at FROM celeriac_results WHERE key = ? AND {_LIVE}"
            row = conn.execute(sql, (key, now)).fetchone()
            try:
                current = 0 if row is None else int(bytes(row[0]))
            except ValueError as exc:
                raise OperationalError(f"{key!r} does not hold an integer") from exc
            new = current + int(amount)
            expires_at = _expiry(expires, now)
            if expires_at is None and row is not None:
                expires_at = row[1]  # keep the counter's expiry, as Redis INCR does
            conn.execute(_UPSERT, (key, str(new).encode("ascii"), expires_at))
            return new

        value = self._db.write(add)
        self._notify((key,))
        self._written(1)
        return value

    def wait_for_change(self, key: str, previous: bytes | None, timeout: float) -> bytes | None:
        if timeout <= 0:
            return self.get(key)
        deadline = time.monotonic() + timeout
        self._db.connection()  # the file exists: its wake directory is named after it
        # listen first, then look: a write after the look wakes the listener
        with self._hub.listen([result_channel(key)], remote=self.wake_ups) as listener:
            delay = self.poll_min
            while True:
                value = self.get(key)
                remaining = deadline - time.monotonic()
                if value != previous or remaining <= 0:
                    return value
                if listener.wait(min(delay, remaining)):
                    delay = self.poll_min
                else:
                    delay = backoff(delay, self.poll_min, self.poll_max)

    def _notify(self, keys: Iterable[str]) -> None:
        """After a commit: wake whoever waits for one of ``keys``, in any process."""
        self._hub.notify(dict.fromkeys(map(result_channel, keys)), remote=self.wake_ups)

    # -- expiry --------------------------------------------------------------------------------
    def _written(self, count: int) -> None:
        """Count writes; every ``cleanup_every`` (and on the first) delete expired rows."""
        with self._writes_lock:
            before, self._writes = self._writes, self._writes + count
        every = self.cleanup_every
        due = before == 0 or before // every != (before + count) // every
        if due:
            self._delete_expired(_CLEANUP_BATCH)

    def _delete_expired(self, batch: int | None) -> int:
        limit = -1 if batch is None else batch
        now = time.time()
        return self._db.write(lambda conn: conn.execute(_CLEANUP, (now, limit)).rowcount)

    def cleanup(self) -> int:
        return self._delete_expired(None)

    # -- chord joins (added for the canvas; see KeyValueStore.join_add_many) -------------------
    def join_add_many(
        self, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
    ) -> list[JoinState]:
        if not adds:
            return []
        found = self._db.write(
            lambda conn: [_join_add(conn, a, expires, claim_seconds) for a in adds]
        )
        self._notify(k for a in adds for k in (_member_key(a), f"{a.key}.n", f"{a.key}.c"))
        self._written(len(adds))
        return found

    def join_values(self, key: str) -> list[bytes]:
        sql = (
            f"SELECT value FROM celeriac_results WHERE key > ? AND key < ? AND {_LIVE} ORDER BY key"
        )

        def read(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(sql, (f"{key}.j:", f"{key}.j;", time.time()))
            return [bytes(value) for (value,) in rows]

        return self._db.read(read)

    def join_finish(self, key: str, token: str, done_expires: float) -> bool:
        def finish(conn: sqlite3.Connection) -> bool:
            now = time.time()
            if _live(conn, f"{key}.c", now) not in (token.encode(), b"done"):
                return False
            conn.execute(
                "DELETE FROM celeriac_results WHERE key > ? AND key < ?", (f"{key}.j:", f"{key}.j;")
            )
            doomed = [(f"{key}{suffix}",) for suffix in (".n", ".s", ".t", ".d")]
            conn.executemany("DELETE FROM celeriac_results WHERE key = ?", doomed)
            conn.execute(_UPSERT, (f"{key}.c", b"done", now + done_expires))
            return True

        done = self._db.write(finish)
        self._notify(f"{key}{suffix}" for suffix in (".c", ".n", ".s", ".t", ".d"))
        return done

    def close(self) -> None:
        self._db.close()
        self._hub.release()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"
