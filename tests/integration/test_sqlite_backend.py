"""The SQLite result store beyond the shared contract suite: the file, expiry and cleanup,
waiting, and sharing the file with the broker and with other processes.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac._internal.wake import wake_hub
from celeriac.backends.sqlite import SQLiteStore
from celeriac.backends.urls import create_store
from celeriac.exceptions import ImproperlyConfigured, OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.sqlite import SCHEMA_VERSION, SQLiteTransport

SOON = 5.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture
def make(db: Path) -> Iterator[Callable[..., SQLiteStore]]:
    opened: list[SQLiteStore] = []

    def make(**options: Any) -> SQLiteStore:
        store = SQLiteStore(f"sqlite:///{db}", options=options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make: Callable[..., SQLiteStore]) -> SQLiteStore:
    return make()


def rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    count: int = conn.execute("SELECT count(*) FROM celeriac_results").fetchone()[0]
    conn.close()
    return count


def sleep_until(when: float) -> None:
    """Let wall-clock time pass (expiry times are wall-clock)."""
    while time.time() < when:
        time.sleep(max(0.0, when - time.time()))


@pytest.mark.parametrize("scheme", ["sqlite", "db+sqlite"])
def test_registered_for_both_schemes(db: Path, scheme: str) -> None:
    store = create_store(f"{scheme}:///{db}")
    assert isinstance(store, SQLiteStore)
    store.set("k", b"v", None)
    assert store.describe() == f"sqlite:///{db}"
    store.close()


def test_broker_and_results_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'celeriac.sqlite3'}"
    transport, store = SQLiteTransport(url), SQLiteStore(url)
    transport.publish("q", RawMessage(b"task"))
    store.set("celery-task-meta-1", b"{}", None)
    [delivery] = transport.fetch(["q"], 1, SOON)
    transport.ack([delivery])
    assert store.get("celery-task-meta-1") == b"{}"
    conn = sqlite3.connect(tmp_path / "celeriac.sqlite3")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"celeriac_messages", "celeriac_dead_letters", "celeriac_results"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    transport.close()
    store.close()


def test_a_newer_layout_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SQLiteStore(f"sqlite:///{db}")
    with pytest.raises(ImproperlyConfigured, match="layout version"):
        store.get("k")
    store.close()


def test_expired_rows_are_invisible_before_cleanup(
    make: Callable[..., SQLiteStore], db: Path
) -> None:
    store = make(cleanup_every=10**9)
    store.set("warm-up", b"v", None)  # the first write's cleanup is behind us
    store.set("gone", b"v", 0.1)
    store.set("kept", b"v", 60)
    assert store.incr("counter", 1, 0.1) == 1
    sleep_until(time.time() + 0.15)
    assert store.mget(["gone", "kept", "counter"]) == [None, b"v", None]
    assert rows(db) == 4  # still there, just not visible
    assert store.incr("counter", 1, 0.1) == 1  # an expired counter starts again
    sleep_until(time.time() + 0.15)
    assert store.cleanup() == 2
    assert rows(db) == 2
    assert store.cleanup() == 0


def test_incr_keeps_the_expiry_unless_given(store: SQLiteStore, db: Path) -> None:
    store.incr("n", 1, 60)
    store.incr("n", 1)
    conn = sqlite3.connect(db)
    expires_at = conn.execute("SELECT expires_at FROM celeriac_results").fetchone()[0]
    conn.close()
    assert expires_at is not None and expires_at > time.time() + 50
    assert store.get("n") == b"2"


def test_incr_of_a_non_integer_is_an_error(store: SQLiteStore) -> None:
    store.set("k", b"not a number", None)
    with pytest.raises(OperationalError, match="integer"):
        store.incr("k")
    assert store.get("k") == b"not a number"


def insert_expired(db: Path, count: int) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executemany(
        "INSERT INTO celeriac_results (key, value, expires_at) VALUES (?, ?, ?)",
        [(f"old{i}", b"v", time.time() - 1) for i in range(count)],
    )
    conn.close()


def test_expired_rows_are_cleaned_without_beat(make: Callable[..., SQLiteStore], db: Path) -> None:
    store = make(cleanup_every=10)
    store.set("first", b"v", None)  # 1 row written (the first write cleans: nothing yet)
    insert_expired(db, 5)
    store.set_many([(f"new{i}", b"v", None) for i in range(8)])  # 9 rows written
    assert rows(db) == 14
    store.set("tenth", b"v", None)  # the tenth row written since the last cleanup cleans
    assert rows(db) == 10


def test_first_write_of_a_process_cleans(make: Callable[..., SQLiteStore], db: Path) -> None:
    make().get("k")  # creates the table
    insert_expired(db, 3)
    make().set("new", b"v", None)
    assert rows(db) == 1


def test_set_in_this_process_wakes_a_waiter_at_once(make: Callable[..., SQLiteStore]) -> None:
    watcher = make(polling_interval=30.0)
    watcher.poll_min = 30.0  # only a notification can end this wait early
    writer = make()
    result: list[bytes | None] = []
    thread = threading.Thread(target=lambda: result.append(watcher.wait_for_change("k", None, 20)))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()
    start = time.monotonic()
    writer.set("k", b"done", None)
    thread.join(SOON)
    assert result == [b"done"]
    assert time.monotonic() - start < 1.0


def test_idle_wait_backs_off(make: Callable[..., SQLiteStore]) -> None:
    store = make(polling_interval=0.1)
    reads = 0
    original = store.mget

    def counting(keys: Any) -> list[bytes | None]:
        nonlocal reads
        reads += 1
        return original(keys)

    store.mget = counting  # type: ignore[method-assign]
    assert store.wait_for_change("k", None, 1.0) is None
    # 2, 4, 8, ... 64 ms then every 100 ms: about 14 reads in a second, never hundreds
    assert 5 <= reads <= 25


def _set_later(url: str, started: Any) -> None:
    store = SQLiteStore(url)
    started.wait(30)
    store.set("k", b"from another process", None)
    store.close()


def test_a_set_in_another_process_is_seen_within_the_polling_interval(db: Path) -> None:
    url = f"sqlite:///{db}"
    store = SQLiteStore(url, options={"polling_interval": 0.1})
    store.get("k")  # the tables exist before the child starts
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    child = ctx.Process(target=_set_later, args=(url, started))
    child.start()
    try:
        started.set()
        value = store.wait_for_change("k", None, 30)
        assert value == b"from another process"
    finally:
        child.join(30)
        store.close()
    assert child.exitcode == 0


def _set_when_waited_for(url: str, directory: str, sent: Any) -> None:
    """In another process: set "k" once a waiter listens (its socket is in the directory)."""
    store = SQLiteStore(url)
    deadline = time.monotonic() + 30
    while not (os.path.isdir(directory) and os.listdir(directory)):
        assert time.monotonic() < deadline, "nobody waited"
        time.sleep(0.01)
    time.sleep(0.1)  # it is waiting on its socket by now (and would wait 30 s for a poll)
    sent.value = time.time()
    store.set("k", b"from afar", None)
    store.close()


def test_a_set_in_another_process_wakes_a_waiter_at_once(db: Path) -> None:
    url = f"sqlite:///{db}"
    store = SQLiteStore(url, options={"polling_interval": 30.0})
    store.poll_min = 30.0  # only a wake can end this wait early
    store.get("k")  # the file exists: so does its wake directory name
    directory = wake_hub(store.path).directory
    assert directory is not None
    ctx = multiprocessing.get_context("spawn")
    sent = ctx.Value("d", 0.0)
    child = ctx.Process(target=_set_when_waited_for, args=(url, str(directory), sent))
    child.start()
    try:
        value = store.wait_for_change("k", None, 20)
        received = time.time()
    finally:
        child.join(30)
        store.close()
    assert child.exitcode == 0
    assert value == b"from afar"
    assert received - sent.value < 1.0, "woken by polling, not by the set"


def test_a_set_wakes_only_the_waiters_of_its_key(make: Callable[..., SQLiteStore]) -> None:
    watcher, writer = make(polling_interval=30.0), make()
    watcher.poll_min = 30.0
    reads = 0
    original = watcher.mget

    def counting(keys: Any) -> list[bytes | None]:
        nonlocal reads
        reads += 1
        return original(keys)

    watcher.mget = counting  # type: ignore[method-assign]
    result: list[bytes | None] = []
    thread = threading.Thread(target=lambda: result.append(watcher.wait_for_change("k", None, 20)))
    thread.start()
    thread.join(0.2)
    looked = reads
    writer.set_many([("other", b"x", None), ("another", b"y", None)])
    writer.delete(["other"])
    thread.join(0.2)
    assert thread.is_alive() and reads == looked
    writer.incr("k")
    thread.join(SOON)
    assert result == [b"1"]


def _bump(url: str, times: int, out: Any) -> None:
    store = SQLiteStore(url)
    out.put([store.incr("counter") for _ in range(times)])
    store.close()


def test_incr_is_atomic_across_processes(db: Path) -> None:
    url = f"sqlite:///{db}"
    SQLiteStore(url).close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    children = [ctx.Process(target=_bump, args=(url, 200, out)) for _ in range(3)]
    for child in children:
        child.start()
    seen = [n for _ in children for n in out.get(timeout=60)]
    for child in children:
        child.join(30)
    assert sorted(seen) == list(range(1, 601))
    store = SQLiteStore(url)
    assert store.get("counter") == b"600"
    store.close()
