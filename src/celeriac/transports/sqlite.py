"""SQLite broker: the embedded default, one file shared safely by several processes.

URL
    ``sqlite:///relative/path.db`` (relative to the working directory), ``sqlite:////abs/path.db``,
    and ``sqlite://`` alone for ``celeriac.sqlite3`` in the working directory. The path is made
    absolute when the transport is created. No host, no query string (options go in
    ``broker_transport_options``); ``:memory:`` is refused (it cannot be shared).

Options (``broker_transport_options``; unknown keys are ignored, other drivers have their own)
    ``busy_timeout`` (s, default 10): how long a statement waits for another process's write
    lock before ``OperationalError``; locked/busy errors are retried within that time, after
    pauses from 0.1 ms doubling to 5 ms. ``wake`` (default True): wake-ups across processes
    (below); False leaves polling only. ``polling_interval`` (s, default 0.1): the longest pause
    of an idle ``fetch`` between two looks at the file; ``polling_interval_min`` (s, default
    0.005) the first pause. Pauses double while nothing arrives. ``synchronous`` (default
    ``NORMAL``): SQLite's ``PRAGMA synchronous`` (``FULL`` also survives power loss, at a cost
    per commit).

Tables (created on first use; ``PRAGMA user_version`` is the layout version, shared with the
result store of ``celeriac.backends.sqlite`` when both use one file)::

    celeriac_messages      one row per message not yet acked
      id INTEGER PRIMARY KEY   publish order (FIFO within a priority)
      queue, priority          Celery's 0-9, lower served first (as on Redis)
      state                    0 ready, 1 delayed (waiting for its eta), 2 held (leased)
      visible_at               delayed: the eta; held: the lease expiry (Unix time)
      lease_token, lease_owner who holds it ("host:pid"); the token is part of the delivery tag
      delivery_count, redelivered
      published_at, content_type, content_encoding, headers (JSON), properties (JSON), body (BLOB)
      indexes: (queue, priority, id) WHERE state = 0; (visible_at) WHERE state <> 0; (queue)
    celeriac_dead_letters  id, queue, reason, failed_at, delivery_count, priority, the message
                           columns as above (copied verbatim, even when they are corrupt)

Guarantees
    Every write is one short ``BEGIN IMMEDIATE`` transaction; the file is in WAL mode, so readers
    never block writers. A fetch first makes due rows ready (delayed messages whose eta passed,
    held messages whose lease ran out, with ``redelivered``) and then, in that transaction,
    selects the next ready rows and leases them by id: each message goes to exactly one consumer
    at a time, across threads and processes. A lease that ran out still works for its holder
    (ack, renew, ...) until the next fetch of any consumer takes it back. A row that cannot be
    decoded is moved to the dead-letter table with the reason, and the fetch goes on. Each
    thread gets its own connection (the worker fetches on one thread and acks on another); after
    ``fork`` the child opens new ones. Times are wall-clock Unix times, so the processes must
    share a clock, i.e. one machine. Not for network file systems (WAL needs shared memory
    between the processes).

Waking up (``celeriac._internal.wake``)
    An idle ``fetch`` does not spin. It binds a Unix datagram socket in the file's wake
    directory (``/dev/shm/celeriac-<uid>/<device>.<inode>/``, one name per queue), looks at the
    file once more, and waits on the socket. A publish (or requeue, defer, requeue of dead
    letters), once committed, sends one byte to as many waiting consumers of the queue as it
    has new messages, in this process or another: they claim at once (about a millisecond from
    commit to claim across processes, instead of up to ``polling_interval``). A consumer that
    may have been woken for a message it did not take passes the wake on. Wakes are a shortcut,
    never a requirement: a waiting ``fetch`` still looks at the file (reading, never locking)
    after pauses that double up to ``polling_interval`` and end early at the next due time (an
    eta, a lease running out), so a lost wake costs latency only. While messages keep coming, a
    consumer whose last fetch was full claims at once without a socket.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celeriac._internal.sqlite import (
    DEFAULT_FILENAME,
    SCHEMA_VERSION,
    SQLiteDatabase,
    backoff,
    flag,
    is_busy,
    one_line,
    sqlite_path,
)
from celeriac._internal.wake import Listener, message_channel, wake_hub
from celeriac.exceptions import EncodeError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import DEFAULT_LEASE_SECONDS, DeadLetter, Delivery, Transport

logger = logging.getLogger("celeriac.transports.sqlite")

#: message states
READY, DELAYED, HELD = 0, 1, 2

_MESSAGE_COLUMNS = "content_type, content_encoding, headers, properties, body"
#: the message columns as bytes, so that a corrupt (non UTF-8) text never fails in sqlite3 itself
_RAW_COLUMNS = (
    "CAST(content_type AS BLOB), CAST(content_encoding AS BLOB), CAST(headers AS BLOB), "
    "CAST(properties AS BLOB), body"
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS celeriac_messages (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state INTEGER NOT NULL DEFAULT 0,
        visible_at REAL NOT NULL,
        lease_token INTEGER,
        lease_owner TEXT,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        redelivered INTEGER NOT NULL DEFAULT 0,
        published_at REAL NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        headers TEXT NOT NULL,
        properties TEXT NOT NULL,
        body BLOB NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS celeriac_messages_ready
        ON celeriac_messages (queue, priority, id) WHERE state = 0""",
    """CREATE INDEX IF NOT EXISTS celeriac_messages_due
        ON celeriac_messages (visible_at) WHERE state <> 0""",
    "CREATE INDEX IF NOT EXISTS celeriac_messages_queue ON celeriac_messages (queue)",
    """CREATE TABLE IF NOT EXISTS celeriac_dead_letters (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        reason TEXT NOT NULL,
        failed_at REAL NOT NULL,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        priority INTEGER NOT NULL DEFAULT 0,
        content_type TEXT, content_encoding TEXT, headers TEXT, properties TEXT, body BLOB)""",
)

_INSERT = (
    "INSERT INTO celeriac_messages (queue, priority, state, visible_at, published_at, "
    f"{_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PROMOTE = (
    "UPDATE celeriac_messages SET state = 0, redelivered = (redelivered OR state = 2), "
    "lease_token = NULL, lease_owner = NULL WHERE state <> 0 AND visible_at <= ?"
)
_CLAIMED = f"id, queue, priority, delivery_count, redelivered, {_RAW_COLUMNS}"
#: the next ready rows of a queue; the claim then leases them by id, in the same transaction
_READY = (
    f"SELECT {_CLAIMED} FROM celeriac_messages INDEXED BY celeriac_messages_ready "
    "WHERE state = 0 AND queue = ? ORDER BY priority, id LIMIT ?"
)
_TAKE = (
    "UPDATE celeriac_messages SET state = 2, visible_at = ?, lease_token = ?, lease_owner = ?, "
    "delivery_count = delivery_count + 1 WHERE id IN "
)
#: ids leased per UPDATE (keeps below SQLite's oldest limit of 999 parameters)
_TAKE_CHUNK = 500
_PROBE = (
    "SELECT (SELECT 1 FROM celeriac_messages INDEXED BY celeriac_messages_ready "
    "WHERE state = 0 AND queue IN (SELECT value FROM json_each(?)) LIMIT 1), "
    "(SELECT min(visible_at) FROM celeriac_messages INDEXED BY celeriac_messages_due "
    "WHERE state <> 0)"
)
_NEXT_DUE = (
    "SELECT min(visible_at) FROM celeriac_messages INDEXED BY celeriac_messages_due "
    "WHERE state <> 0"
)
_HELD = "id = ? AND lease_token = ? AND state = 2"
_TO_DEAD = (
    "INSERT INTO celeriac_dead_letters (queue, reason, failed_at, delivery_count, priority, "
    f"{_MESSAGE_COLUMNS}) SELECT queue, ?, ?, delivery_count, priority, {_MESSAGE_COLUMNS} "
    "FROM celeriac_messages WHERE id = ?"
)
_FROM_DEAD = (
    "INSERT INTO celeriac_messages (queue, priority, state, visible_at, published_at, "
    f"{_MESSAGE_COLUMNS}) SELECT queue, priority, 0, ?1, ?1, {_MESSAGE_COLUMNS} "
    "FROM celeriac_dead_letters WHERE {where} ORDER BY id"
)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _mapping(value: Any, column: str) -> dict[str, Any]:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError(f"{column} is a JSON {type(data).__name__}, not an object")
    return data


def decode_row(columns: Sequence[Any]) -> RawMessage:
    """The message of the five message columns; ``ValueError`` names the corrupt column."""
    content_type, content_encoding, headers, properties, body = columns
    name = "content_type"
    try:
        ctype = _text(content_type)
        name = "content_encoding"
        cenc = _text(content_encoding)
        name = "headers"
        head = _mapping(headers, name)
        name = "properties"
        props = _mapping(properties, name)
        name = "body"
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"undecodable {name}: {exc}") from exc
    return RawMessage(data, ctype, cenc, head, props)


def _lenient(columns: Sequence[Any]) -> RawMessage:
    """Best effort for listing dead letters, which may be corrupt rows."""
    try:
        return decode_row(columns)
    except ValueError:
        content_type, content_encoding, _, _, body = columns
        text = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v or "")
            for v in (content_type, content_encoding)
        ]
        data = body if isinstance(body, bytes) else str(body or "").encode("utf-8", "replace")
        return RawMessage(data, text[0], text[1], {}, {})


def _dumps(value: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"message {what} are not JSON-serialisable: {exc}") from exc


def _handle(delivery: Delivery) -> tuple[int, int] | None:
    """(row id, lease token) of a delivery of this driver; None for a foreign one."""
    handle = delivery.handle
    if isinstance(handle, tuple) and len(handle) == 2:
        return int(handle[0]), int(handle[1])
    row, _, token = delivery.tag.partition(".")
    try:
        return int(row), int(token, 16)
    except ValueError:
        return None


def _id_list(ids: Sequence[str] | None) -> tuple[str, list[Any]]:
    """A WHERE clause selecting dead letters by id (all when ``ids`` is None)."""
    if ids is None:
        return "1", []
    numbers = [int(i) for i in ids if str(i).strip().isdigit()]
    return "id IN (SELECT value FROM json_each(?))", [json.dumps(numbers)]


class SQLiteTransport(Transport):
    """The embedded broker (see the module docstring)."""

    schemes = ("sqlite",)

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(url, lease_seconds=lease_seconds, options=options)
        opts = self.options
        self.path = sqlite_path(url).resolve()
        self.poll_min = float(opts.get("polling_interval_min", 0.005))
        self.poll_max = max(self.poll_min, float(opts.get("polling_interval", 0.1)))
        self._db = SQLiteDatabase(
            self.path,
            schema=SCHEMA,
            name="transport",
            busy_timeout=float(opts.get("busy_timeout", 10.0)),
            synchronous=str(opts.get("synchronous", "NORMAL")),
        )
        #: wake consumers in other processes through sockets (``celeriac._internal.wake``)
        self.wake_ups = flag(opts.get("wake", True))
        self._hub = wake_hub(self.path)
        #: the listeners of this transport's waiting fetches (``wake`` pokes them)
        self._listeners: set[Listener] = set()
        self._woken = threading.Event()
        #: whether the last fetch filled its limit (then the next one claims before listening)
        self._busy = True

    # -- producer side -------------------------------------------------------------------------
    def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        self.publish_many([(queue, message, eta)])

    def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        if not items:
            return
        now = time.time()
        rows = [self._row(queue, message, eta, now) for queue, message, eta in items]
        self._db.write(lambda conn: conn.executemany(_INSERT, rows))
        self._notify(Counter(queue for queue, _, _ in items))

    @staticmethod
    def _row(queue: str, message: RawMessage, eta: float | None, now: float) -> tuple[Any, ...]:
        delayed = eta is not None and eta > now
        return (
            queue,
            message.priority,
            DELAYED if delayed else READY,
            eta if delayed else now,
            now,
            message.content_type,
            message.content_encoding,
            _dumps(message.headers, "headers"),
            _dumps(message.properties, "properties"),
            bytes(message.body),
        )

    # -- consumer side -------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        deadline = time.monotonic() + max(0.0, timeout)
        if self._busy or timeout <= 0:
            # the last fetch filled its limit, so more is likely ready: claim at once (one
            # transaction, no probe, no socket)
            deliveries, _ = self._claim_ready(names, limit)
            if deliveries or self._done(deadline):
                self._busy = len(deliveries) >= limit
                return deliveries
        channels = [message_channel(name) for name in names]
        self._db.connection()  # the file exists: its wake directory is named after it
        with self._hub.listen(channels, remote=self.wake_ups) as listener:
            self._listeners.add(listener)
            try:
                deliveries = self._wait(names, limit, deadline, listener)
            finally:
                self._listeners.discard(listener)
        self._busy = len(deliveries) >= limit
        if (listener.unused or self._busy) and self._probe(names) == 0.0:
            # a wake may have been meant for a message this fetch did not take: pass it on
            self._hub.notify(dict.fromkeys(channels, 1), remote=self.wake_ups)
        return deliveries

    def _claim_ready(self, names: list[str], limit: int) -> tuple[list[Delivery], float | None]:
        """Claim; again at once while the claimed rows were all corrupt (now dead letters)."""
        while True:
            deliveries, due = self._db.write(lambda conn: self._claim(conn, names, limit))
            if deliveries or due != 0.0:
                return deliveries, due

    def _done(self, deadline: float) -> bool:
        """Whether an empty fetch ends now: its time is up or ``wake`` was called."""
        if deadline - time.monotonic() > 0 and not self._woken.is_set():
            return False
        self._woken.clear()
        return True

    def _wait(
        self, names: list[str], limit: int, deadline: float, listener: Listener
    ) -> list[Delivery]:
        """Listening: look (without locking), claim when something is due, else wait."""
        delay = self.poll_min
        woken = False
        while True:
            # a wake means a commit: claim at once; otherwise look without locking first
            due = 0.0 if woken else self._probe(names)
            if due is not None and due <= time.time():
                deliveries, due = self._claim_ready(names, limit)
                if deliveries:
                    return deliveries
            if self._done(deadline):
                return []
            pause = min(delay, deadline - time.monotonic())
            if due is not None:
                pause = min(pause, max(due - time.time(), 0.001))
            woken = listener.wait(pause)
            delay = self.poll_min if woken else backoff(delay, self.poll_min, self.poll_max)

    def _probe(self, names: list[str]) -> float | None:
        """Without locking: 0 if a message is ready in ``names``, else the next due time."""
        encoded = json.dumps(names)
        ready, next_due = self._db.read(lambda conn: conn.execute(_PROBE, (encoded,)).fetchone())
        if ready is not None:
            return 0.0
        return None if next_due is None else float(next_due)

    def _claim(
        self, conn: sqlite3.Connection, names: list[str], limit: int
    ) -> tuple[list[Delivery], float | None]:
        """Claim up to ``limit`` messages; also returns the next due time (for the idle wait)."""
        now = time.time()
        conn.execute(_PROMOTE, (now,))
        token = secrets.randbits(62)
        owner = f"{socket.gethostname()}:{os.getpid()}"
        deliveries: list[Delivery] = []
        claimed = 0
        for queue in names:
            wanted = limit - len(deliveries)
            if wanted <= 0:
                break
            lease = (now + self.lease_seconds, token, owner)
            rows = self._take(conn, lease, queue, wanted)
            claimed += len(rows)
            deliveries.extend(self._deliveries(conn, rows, token, now))
        if deliveries or claimed:
            return deliveries, None if deliveries else 0.0
        next_due = conn.execute(_NEXT_DUE).fetchone()[0]
        return deliveries, None if next_due is None else float(next_due)

    @staticmethod
    def _take(
        conn: sqlite3.Connection, lease: tuple[Any, ...], queue: str, limit: int
    ) -> list[Any]:
        """Lease up to ``limit`` ready rows of ``queue``, in order; returns them as they were
        (``_CLAIMED`` columns, ``delivery_count`` before this delivery)."""
        rows = conn.execute(_READY, (queue, limit)).fetchall()
        for start in range(0, len(rows), _TAKE_CHUNK):
            ids = [row[0] for row in rows[start : start + _TAKE_CHUNK]]
            conn.execute(f"{_TAKE}({', '.join('?' * len(ids))})", (*lease, *ids))
        return rows

    def _deliveries(
        self, conn: sqlite3.Connection, rows: Iterable[Sequence[Any]], token: int, now: float
    ) -> list[Delivery]:
        """Decode claimed rows; a corrupt one goes to the dead-letter table instead."""
        found: list[Delivery] = []
        for row in rows:
            row_id, queue, _, previous, redelivered = row[:5]
            try:
                message = decode_row(row[5:])
            except ValueError as exc:
                reason = one_line(f"corrupt message row: {exc}")
                self._bury(conn, row_id, reason, now)
                logger.error("Dead-lettered message from queue %r: %s", queue, reason)
                continue
            found.append(
                Delivery(
                    tag=f"{row_id}.{token:x}",
                    queue=queue,
                    message=message,
                    delivery_count=previous + 1,
                    redelivered=bool(redelivered),
                    handle=(row_id, token),
                )
            )
        return found

    @staticmethod
    def _bury(conn: sqlite3.Connection, row_id: int, reason: str, now: float) -> int:
        conn.execute(_TO_DEAD, (reason, now, row_id))
        return conn.execute("DELETE FROM celeriac_messages WHERE id = ?", (row_id,)).rowcount

    def _held(
        self, sql: str, params: Iterable[tuple[Any, ...]], *, wake: Sequence[str] = ()
    ) -> None:
        """Run ``sql`` for each of ``params``; then wake consumers of the ``wake`` queues (one
        per message)."""
        rows = list(params)
        if rows:
            self._db.write(lambda conn: conn.executemany(sql, rows))
            if wake:
                self._notify(Counter(wake))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        keys = [k for k in map(_handle, deliveries) if k is not None]
        self._held(f"DELETE FROM celeriac_messages WHERE {_HELD}", keys)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        ours = [(d.queue, k) for d in deliveries if (k := _handle(d)) is not None]
        sql = (
            "UPDATE celeriac_messages SET state = 0, redelivered = 1, lease_token = NULL, "
            f"lease_owner = NULL, delivery_count = max(delivery_count - 1, 0) WHERE {_HELD}"
        )
        self._held(sql, [k for _, k in ours], wake=[queue for queue, _ in ours])

    def defer(self, delivery: Delivery, eta: float) -> None:
        key = _handle(delivery)
        sql = (
            "UPDATE celeriac_messages SET state = 1, visible_at = ?, lease_token = NULL, "
            f"lease_owner = NULL, delivery_count = max(delivery_count - 1, 0) WHERE {_HELD}"
        )
        # the consumer that wakes looks again and waits until the new due time
        self._held(sql, [] if key is None else [(eta, *key)], wake=[delivery.queue])

    def renew(self, deliveries: Sequence[Delivery]) -> None:
        expires = time.time() + self.lease_seconds
        keys = [(expires, *k) for k in map(_handle, deliveries) if k is not None]
        self._held(f"UPDATE celeriac_messages SET visible_at = ? WHERE {_HELD}", keys)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        key = _handle(delivery)
        if key is None:
            return
        text = one_line(reason)

        def bury(conn: sqlite3.Connection) -> None:
            held = conn.execute(f"SELECT 1 FROM celeriac_messages WHERE {_HELD}", key).fetchone()
            if held is not None:
                self._bury(conn, key[0], text, time.time())

        self._db.write(bury)

    # -- management ----------------------------------------------------------------------------
    def qsize(self, queue: str) -> int:
        sql = "SELECT count(*) FROM celeriac_messages WHERE queue = ?"
        count: int = self._db.read(lambda conn: conn.execute(sql, (queue,)).fetchone()[0])
        return count

    def purge(self, queue: str) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            conn.execute(_PROMOTE, (time.time(),))
            sql = "DELETE FROM celeriac_messages WHERE queue = ? AND state <> 2"
            return conn.execute(sql, (queue,)).rowcount

        return self._db.write(purge)

    def queues(self) -> list[str]:
        sql = "SELECT DISTINCT queue FROM celeriac_messages ORDER BY queue"
        return self._db.read(lambda conn: [row[0] for row in conn.execute(sql)])

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        sql = (
            f"SELECT id, queue, reason, failed_at, delivery_count, {_RAW_COLUMNS} "
            "FROM celeriac_dead_letters ORDER BY id LIMIT ?"
        )
        rows = self._db.read(lambda conn: conn.execute(sql, (limit,)).fetchall())
        return [
            DeadLetter(
                id=str(row[0]),
                queue=row[1],
                reason=row[2],
                message=_lenient(row[5:]),
                failed_at=float(row[3]),
                delivery_count=int(row[4]),
            )
            for row in rows
        ]

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        where, params = _id_list(ids)

        def move(conn: sqlite3.Connection) -> dict[str, int]:
            sql = f"SELECT queue, count(*) FROM celeriac_dead_letters WHERE {where} GROUP BY queue"
            counts = dict(conn.execute(sql, params).fetchall())
            conn.execute(_FROM_DEAD.format(where=where), (time.time(), *params))
            conn.execute(f"DELETE FROM celeriac_dead_letters WHERE {where}", params)
            return counts

        moved = self._db.write(move)
        if moved:
            self._notify(moved)
        return sum(moved.values())

    def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        where, params = _id_list(ids)
        sql = f"DELETE FROM celeriac_dead_letters WHERE {where}"
        return self._db.write(lambda conn: conn.execute(sql, params).rowcount)

    def _notify(self, queues: Mapping[str, int]) -> None:
        """After a commit that queued messages: wake as many consumers of each queue (in any
        process) as it has new messages (see ``celeriac._internal.wake``)."""
        wanted = {message_channel(queue): count for queue, count in queues.items()}
        self._hub.notify(wanted, remote=self.wake_ups)

    def wake(self) -> None:
        self._woken.set()
        for listener in list(self._listeners):
            listener.poke()

    def close(self) -> None:
        self.wake()
        self._db.close()
        self._hub.release()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"


__all__ = [
    "DEFAULT_FILENAME",
    "SCHEMA_VERSION",
    "SQLiteTransport",
    "backoff",
    "decode_row",
    "is_busy",
    "one_line",
    "sqlite_path",
]
