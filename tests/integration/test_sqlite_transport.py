"""The SQLite broker beyond the shared contract suite: the file, corrupt rows, locking, threads,
fork, the idle behaviour of ``fetch`` and its wake-ups. Load across processes is tested in
test_sqlite_multiprocess.py, real workers in test_sqlite_e2e.py.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac._internal.wake import message_channel, wake_hub
from celeriac.exceptions import EncodeError, ImproperlyConfigured, OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery
from celeriac.transports.sqlite import SCHEMA_VERSION, SQLiteTransport
from celeriac.transports.urls import create_transport

SOON = 5.0


def msg(body: str, **headers: Any) -> RawMessage:
    return RawMessage(body.encode(), headers={"id": body, **headers}, properties={"priority": 0})


def bodies(deliveries: list[Delivery]) -> list[str]:
    return [d.message.body.decode() for d in deliveries]


def fetch_until(transport: SQLiteTransport, count: int, timeout: float = SOON) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        got += transport.fetch(["q"], count - len(got), min(1.0, deadline - time.monotonic()))
    return got


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "broker.db"


@pytest.fixture
def make(db: Path) -> Iterator[Callable[..., SQLiteTransport]]:
    opened: list[SQLiteTransport] = []

    def make(**kwargs: Any) -> SQLiteTransport:
        transport = SQLiteTransport(f"sqlite:///{db}", **kwargs)
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(make: Callable[..., SQLiteTransport]) -> SQLiteTransport:
    return make()


def sleep_until(when: float) -> None:
    """Let wall-clock time pass (leases are wall-clock deadlines)."""
    while time.time() < when:
        time.sleep(max(0.0, when - time.time()))


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None, timeout=5, check_same_thread=False)


# -- the file ------------------------------------------------------------------------------------
def test_registered_for_the_sqlite_scheme(db: Path) -> None:
    transport = create_transport(f"sqlite:///{db}", lease_seconds=5)
    assert isinstance(transport, SQLiteTransport)
    assert transport.lease_seconds == 5
    assert transport.describe() == f"sqlite:///{db}"
    transport.close()


def test_default_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = SQLiteTransport("sqlite://")
    relative = SQLiteTransport("sqlite:///sub/dir/q.db")
    monkeypatch.chdir("/")  # the path was made absolute at creation
    default.publish("q", msg("a"))
    relative.publish("q", msg("b"))
    assert (tmp_path / "celeriac.sqlite3").exists()
    assert (tmp_path / "sub" / "dir" / "q.db").exists()
    assert default.describe() == f"sqlite:///{tmp_path / 'celeriac.sqlite3'}"
    default.close()
    relative.close()


def test_file_is_in_wal_mode_with_the_layout_version(transport: SQLiteTransport, db: Path) -> None:
    transport.publish("q", msg("a"))
    conn = raw(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"celeriac_messages", "celeriac_dead_letters"} <= tables
    conn.close()


def test_a_newer_layout_is_refused(db: Path) -> None:
    conn = raw(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    transport = SQLiteTransport(f"sqlite:///{db}")
    with pytest.raises(ImproperlyConfigured, match="layout version"):
        transport.qsize("q")
    transport.close()


def test_not_a_database_is_an_operational_error(db: Path) -> None:
    db.write_bytes(b"this is not a database file, just text" * 100)
    transport = SQLiteTransport(f"sqlite:///{db}")
    with pytest.raises(OperationalError, match="not a database"):
        transport.publish("q", msg("a"))
    transport.close()


def test_unserialisable_headers_are_an_encode_error(transport: SQLiteTransport) -> None:
    with pytest.raises(EncodeError, match="headers"):
        transport.publish("q", msg("a", when=object()))
    assert transport.qsize("q") == 0


# -- corrupt rows (issue 3, test c) --------------------------------------------------------------
def corrupt(db: Path, **columns: Any) -> None:
    """Insert a row straight into the table, as a buggy or foreign writer might."""
    values = {
        "queue": "q",
        "priority": 0,
        "state": 0,
        "visible_at": 0,
        "published_at": 0,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": "{}",
        "properties": "{}",
        "body": b"x",
        **columns,
    }
    conn = raw(db)
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    conn.execute(f"INSERT INTO celeriac_messages ({names}) VALUES ({marks})", list(values.values()))
    conn.close()


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ({"headers": '{"id": "broken", '}, "undecodable headers"),
        ({"headers": b"\xff\xfe{}"}, "undecodable headers"),
        ({"headers": "[1, 2]"}, "undecodable headers"),
        ({"properties": "not json"}, "undecodable properties"),
        ({"content_type": b"\xc3\x28"}, "undecodable content_type"),
    ],
)
def test_corrupt_row_goes_to_dead_letters_and_fetch_goes_on(
    transport: SQLiteTransport, db: Path, columns: dict[str, Any], reason: str
) -> None:
    transport.publish("q", msg("before"))
    corrupt(db, **columns)
    transport.publish("q", msg("after"))
    got = fetch_until(transport, 2)
    assert bodies(got) == ["before", "after"]
    assert transport.fetch(["q"], 10, 0) == []
    [letter] = transport.dead_letters()
    assert letter.queue == "q"
    assert reason in letter.reason and "\n" not in letter.reason
    assert letter.delivery_count == 1
    assert letter.message.body == b"x"
    transport.ack(got)
    assert transport.qsize("q") == 0


def test_a_batch_of_only_corrupt_rows_does_not_end_the_wait(
    transport: SQLiteTransport, db: Path
) -> None:
    transport.qsize("q")  # creates the tables
    for _ in range(3):
        corrupt(db, headers="{")
    transport.publish("q", msg("good"))
    assert bodies(transport.fetch(["q"], 3, SOON)) == ["good"]
    assert len(transport.dead_letters()) == 3


def test_requeued_corrupt_letter_comes_back_to_the_dead_letters(
    transport: SQLiteTransport, db: Path
) -> None:
    transport.qsize("q")  # creates the tables
    corrupt(db, headers="{")
    assert transport.fetch(["q"], 1, 0) == []
    assert transport.requeue_dead_letters() == 1
    assert transport.fetch(["q"], 1, 0) == []
    [letter] = transport.dead_letters()
    assert "undecodable headers" in letter.reason


# -- leases, tags ----------------------------------------------------------------------------------
def test_a_stale_tag_never_touches_the_new_holder(make: Callable[..., SQLiteTransport]) -> None:
    first, second = make(lease_seconds=0.2), make(lease_seconds=30)
    first.publish("q", msg("a"))
    [old] = fetch_until(first, 1)
    [new] = fetch_until(second, 1)  # after the lease ran out
    assert new.tag != old.tag and new.redelivered
    for call in (first.ack, first.requeue, first.renew):
        call([old])
    first.defer(old, time.time() + 60)
    first.dead_letter(old, "stale")
    assert first.dead_letters() == []
    assert first.fetch(["q"], 1, 0) == []  # still held by `second`
    second.ack([new])
    assert first.qsize("q") == 0


def test_an_expired_lease_still_works_for_its_holder_until_taken(
    make: Callable[..., SQLiteTransport],
) -> None:
    holder = make(lease_seconds=0.2)
    holder.publish("q", msg("a"))
    [delivery] = fetch_until(holder, 1)
    sleep_until(time.time() + 0.25)  # the lease runs out; nobody fetches
    holder.ack([delivery])
    assert holder.qsize("q") == 0


def test_tags_carry_row_and_token(transport: SQLiteTransport) -> None:
    transport.publish("q", msg("a"))
    [delivery] = fetch_until(transport, 1)
    foreign = Delivery(tag=delivery.tag, queue="q", message=delivery.message)  # no handle
    transport.ack([foreign])
    assert transport.qsize("q") == 0


def test_purge_counts_a_message_whose_lease_ran_out(make: Callable[..., SQLiteTransport]) -> None:
    transport = make(lease_seconds=0.1)
    transport.publish("q", msg("a"))
    [delivery] = fetch_until(transport, 1)
    sleep_until(time.time() + 0.15)  # the lease runs out
    assert transport.purge("q") == 1
    transport.ack([delivery])
    assert transport.qsize("q") == 0


# -- waiting ---------------------------------------------------------------------------------------
def test_idle_fetch_backs_off(make: Callable[..., SQLiteTransport]) -> None:
    transport = make(options={"polling_interval": 0.1, "polling_interval_min": 0.005})
    probes = 0
    original = transport._probe

    def counting(names: list[str]) -> float | None:
        nonlocal probes
        probes += 1
        return original(names)

    transport._probe = counting  # type: ignore[method-assign]
    assert transport.fetch(["q"], 1, 1.0) == []
    # 5, 10, 20, 40, 80 ms then every 100 ms: about 14 looks in a second, never hundreds
    assert 5 <= probes <= 25


def test_publish_in_the_same_process_wakes_fetch_at_once(
    make: Callable[..., SQLiteTransport],
) -> None:
    consumer = make(options={"polling_interval": 10.0, "polling_interval_min": 10.0})
    producer = make()
    result: list[list[Delivery]] = []
    thread = threading.Thread(target=lambda: result.append(consumer.fetch(["q"], 1, 20.0)))
    thread.start()
    # the consumer's first look found nothing; its next one would be in 10 s
    thread.join(0.2)
    assert thread.is_alive()
    start = time.monotonic()
    producer.publish("q", msg("now"))
    thread.join(SOON)
    assert bodies(result[0]) == ["now"]
    assert time.monotonic() - start < 1.0


def test_fetch_wakes_for_an_eta_even_with_long_polling(
    make: Callable[..., SQLiteTransport],
) -> None:
    transport = make(options={"polling_interval": 10.0, "polling_interval_min": 10.0})
    eta = time.time() + 0.3
    transport.publish("q", msg("later"), eta=eta)
    got = transport.fetch(["q"], 1, SOON)
    assert bodies(got) == ["later"]
    assert eta - 0.05 <= time.time() < eta + 1.0


def test_wake_before_fetch_ends_the_next_empty_wait(transport: SQLiteTransport) -> None:
    transport.wake()
    start = time.monotonic()
    assert transport.fetch(["q"], 1, 10.0) == []
    assert time.monotonic() - start < 1.0


# -- wake-ups across processes (celeriac._internal.wake) -------------------------------------------
LONG_POLL = {"polling_interval": 30.0, "polling_interval_min": 30.0}


def _publish_when_listened(url: str, directory: str, sent: Any) -> None:
    """In another process: publish once the consumer listens (its socket is in the directory)."""
    producer = SQLiteTransport(url)
    deadline = time.monotonic() + 30
    while not (os.path.isdir(directory) and os.listdir(directory)):
        assert time.monotonic() < deadline, "the consumer never listened"
        time.sleep(0.01)
    time.sleep(0.1)  # it is waiting on the socket by now (and would wait 30 s for a poll)
    sent.value = time.time()
    producer.publish("q", msg("from-afar"))
    producer.close()


def test_a_publish_in_another_process_wakes_fetch_at_once(
    make: Callable[..., SQLiteTransport], db: Path
) -> None:
    consumer = make(options=LONG_POLL)
    assert consumer.fetch(["q"], 1, 0) == []  # the file exists: so does its wake directory name
    directory = wake_hub(consumer.path).directory
    assert directory is not None
    ctx = multiprocessing.get_context("spawn")
    sent = ctx.Value("d", 0.0)
    child = ctx.Process(
        target=_publish_when_listened, args=(f"sqlite:///{db}", str(directory), sent)
    )
    child.start()
    try:
        got = consumer.fetch(["q"], 1, 20.0)
        received = time.time()
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert bodies(got) == ["from-afar"]
    assert received - sent.value < 1.0, "woken by polling, not by the publish"


def test_a_publish_wakes_as_many_idle_consumers_as_it_has_messages(
    make: Callable[..., SQLiteTransport],
) -> None:
    producer = make()
    consumers = [make(options=LONG_POLL) for _ in range(3)]
    claims = Counter[int]()
    results: list[list[Delivery]] = []

    def consume(index: int) -> None:
        consumer = consumers[index]
        claim = consumer._claim_ready

        def counting(names: list[str], limit: int) -> Any:
            claims[index] += 1
            return claim(names, limit)

        consumer._claim_ready = counting  # type: ignore[method-assign]
        results.append(consumer.fetch(["q"], 10, 20.0))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    hub = wake_hub(producer.path)
    channel = message_channel("q")
    wait_until(lambda: len(hub._local.get(channel, ())) == 3, "3 waiting consumers")
    claims.clear()  # (the first look of each fetch claims)
    producer.publish("q", msg("one"))
    wait_until(lambda: len(results) == 1, "one consumer to return")
    time.sleep(0.2)
    assert sum(claims.values()) == 1, "a message for one consumer woke several"
    producer.publish_many([("q", msg("two"), None), ("q", msg("three"), None)])
    wait_until(lambda: sum(claims.values()) == 3, "the two others to look")
    wait_until(lambda: sum(map(len, results)) == 3, "all three messages")
    time.sleep(0.2)
    assert sum(claims.values()) == 3
    for consumer in consumers:
        consumer.wake()
    for thread in threads:
        thread.join(SOON)
    assert sorted(b for got in results for b in bodies(got)) == ["one", "three", "two"]


def test_a_wake_for_more_than_a_fetch_takes_is_passed_on(
    make: Callable[..., SQLiteTransport],
) -> None:
    quiet = make(options={"wake": False})  # publishes without waking anybody
    results: list[list[Delivery]] = []
    lock = threading.Lock()

    def consume() -> None:
        got = make(options=LONG_POLL).fetch(["q"], 1, 20.0)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for thread in threads:
        thread.start()
    hub = wake_hub(quiet.path)
    channel = message_channel("q")
    wait_until(lambda: len(hub._local.get(channel, ())) == 2, "2 waiting consumers")
    quiet.publish_many([("q", msg("a"), None), ("q", msg("b"), None)])
    hub.notify({channel: 1})  # one wake for two messages, to a consumer that takes one
    for thread in threads:
        thread.join(SOON)
    assert sorted(b for got in results for b in bodies(got)) == ["a", "b"]


def test_without_wake_ups_a_fetch_makes_no_socket(make: Callable[..., SQLiteTransport]) -> None:
    consumer = make(options={"wake": False, "polling_interval": 0.05})
    assert consumer.fetch(["q"], 1, 0) == []
    directory = wake_hub(consumer.path).directory
    assert directory is not None
    seen: list[list[str]] = []
    thread = threading.Thread(target=lambda: consumer.fetch(["q"], 1, 0.5))
    thread.start()
    while thread.is_alive():
        seen.append(os.listdir(directory) if directory.exists() else [])
        time.sleep(0.02)
    assert not any(seen)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = SOON) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- threads and processes -------------------------------------------------------------------------
def test_fetch_and_ack_on_different_threads(transport: SQLiteTransport) -> None:
    for i in range(50):
        transport.publish("q", msg(f"m{i}"))
    fetched: list[Delivery] = []
    errors: list[BaseException] = []

    def ack_from_here(deliveries: list[Delivery]) -> None:
        try:
            transport.ack(deliveries)
        except BaseException as exc:  # reported below
            errors.append(exc)

    while len(fetched) < 50:
        got = transport.fetch(["q"], 7, 1.0)
        fetched += got
        acker = threading.Thread(target=ack_from_here, args=(got,))
        acker.start()
        acker.join(SOON)
    assert errors == []
    assert transport.qsize("q") == 0


def open_files(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_connections_of_finished_threads_are_closed(transport: SQLiteTransport, db: Path) -> None:
    transport.publish("q", msg("main"))
    before = open_files(db)

    def publish_once(i: int) -> None:
        transport.publish("q", msg(f"t{i}"))

    for i in range(20):
        thread = threading.Thread(target=publish_once, args=(i,))
        thread.start()
        thread.join(SOON)
    assert transport.qsize("q") == 21
    # no pile-up, and no waiting for the garbage collector: at most the last thread's
    # connection may still be open while that thread is being torn down
    assert open_files(db) <= before + 1


def test_writes_wait_for_another_writer_then_succeed(transport: SQLiteTransport, db: Path) -> None:
    transport.publish("q", msg("first"))
    locker = raw(db)
    locker.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.3, lambda: locker.execute("COMMIT"))
    released.start()
    start = time.monotonic()
    transport.publish("q", msg("second"))
    assert time.monotonic() - start >= 0.2
    released.join()
    locker.close()
    assert transport.qsize("q") == 2


def test_a_lock_held_too_long_is_an_operational_error(
    make: Callable[..., SQLiteTransport], db: Path
) -> None:
    transport = make(options={"busy_timeout": 0.2})
    transport.publish("q", msg("first"))
    locker = raw(db)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"):
            transport.publish("q", msg("second"))
        # reading is not blocked by a writer (WAL)
        assert transport.qsize("q") == 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def _publish_in_child(transport: SQLiteTransport) -> None:
    transport.publish("q", msg("from-child"))
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(transport: SQLiteTransport) -> None:
    transport.publish("q", msg("from-parent"))  # the parent's connection is open
    child = multiprocessing.get_context("fork").Process(target=_publish_in_child, args=(transport,))
    child.start()
    child.join(SOON * 2)
    assert child.exitcode == 0
    assert sorted(bodies(fetch_until(transport, 2))) == ["from-child", "from-parent"]


# -- claiming (select, then lease by id, in one transaction) ---------------------------------------
def test_claim_order_counts_and_corrupt_rows(
    make: Callable[..., SQLiteTransport], db: Path
) -> None:
    consumer, other = make(lease_seconds=0.2), make()
    for body, priority in [("p9", 9), ("p0-a", 0), ("p5", 5), ("p0-b", 0)]:
        consumer.publish("q", RawMessage(body.encode(), properties={"priority": priority}))
    corrupt(db, headers="{", priority=1)
    got = fetch_until(consumer, 4)
    assert bodies(got) == ["p0-a", "p0-b", "p5", "p9"]
    assert all(d.delivery_count == 1 and not d.redelivered for d in got)
    assert "undecodable headers" in consumer.dead_letters()[0].reason
    consumer.ack(got[1:])
    [again] = fetch_until(other, 1)  # after the lease ran out
    assert (again.message.body, again.delivery_count, again.redelivered) == (b"p0-a", 2, True)
    other.ack([again])
    assert other.qsize("q") == 0


def test_concurrent_claims_give_each_message_once(
    make: Callable[..., SQLiteTransport],
) -> None:
    producer = make()
    producer.publish_many([("q", msg(f"m{i:03}"), None) for i in range(300)])
    received: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        transport = make()
        while True:
            got = transport.fetch(["q"], 9, 0.2)
            if not got:
                return
            transport.ack(got)
            with lock:
                received.extend(bodies(got))

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(received) == [f"m{i:03}" for i in range(300)]
