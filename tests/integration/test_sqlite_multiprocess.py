"""The SQLite broker shared by several processes (multiprocessing, spawn): exactly-once delivery
under load, and leases when a consumer is SIGKILLed. Transport level; end-to-end tests with real
worker processes live elsewhere.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery
from celeriac.transports.sqlite import SQLiteTransport

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals"),
]

SPAWN = multiprocessing.get_context("spawn")


def msg(ident: str, priority: int = 0) -> RawMessage:
    return RawMessage(
        body=json.dumps([[ident], {}, {}]).encode(),
        headers={"id": ident, "task": "tests.noop"},
        properties={"correlation_id": ident, "priority": priority},
    )


def wait_for(condition: Any, timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition()`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


# -- (a) exactly once: 2 producers, 4 consumers, 10,000 messages ---------------------------------
def _produce(url: str, producer: int, count: int, go: Any) -> None:
    transport = SQLiteTransport(url)
    rng = random.Random(producer)
    go.wait(60)
    sent = 0
    while sent < count:
        size = min(rng.choice([1, 1, 5, 20, 50]), count - sent)
        items = []
        for i in range(sent, sent + size):
            # a few delayed messages (due within a second) and all priorities
            eta = time.time() + rng.uniform(0.05, 1.0) if i % 97 == 0 else None
            items.append(("q", msg(f"p{producer}-{i}", rng.randint(0, 9)), eta))
        if size == 1:
            queue, message, eta = items[0]
            transport.publish(queue, message, eta=eta)
        else:
            transport.publish_many(items)
        sent += size
    transport.close()


def _consume(url: str, out: str, ready: Any, stop: Any) -> None:
    transport = SQLiteTransport(url)
    transport.qsize("q")  # connected, tables exist
    seen: list[tuple[str, int, bool]] = []
    ready.set()
    while True:
        got = transport.fetch(["q"], 16, 0.1)
        transport.ack(got)
        seen += [(d.message.headers["id"], d.delivery_count, d.redelivered) for d in got]
        if not got and stop.is_set():
            break
    Path(out).write_text(json.dumps(seen))
    transport.close()


def test_every_message_is_consumed_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    total_per_producer, producers, consumers = 5000, 2, 4
    monitor = SQLiteTransport(url)
    monitor.qsize("q")
    go, stop = SPAWN.Event(), SPAWN.Event()
    readies = [SPAWN.Event() for _ in range(consumers)]
    outs = [str(tmp_path / f"consumer-{i}.json") for i in range(consumers)]
    procs = [
        SPAWN.Process(target=_consume, args=(url, outs[i], readies[i], stop))
        for i in range(consumers)
    ] + [
        SPAWN.Process(target=_produce, args=(url, p, total_per_producer, go))
        for p in range(producers)
    ]
    try:
        for proc in procs:
            proc.start()
        for ready in readies:
            assert ready.wait(60), "a consumer did not start"
        go.set()
        for proc in procs[consumers:]:
            proc.join(60)
            assert proc.exitcode == 0, "a producer failed"
        wait_for(lambda: monitor.qsize("q") == 0, 60, "the queue to drain")
        stop.set()
        for proc in procs[:consumers]:
            proc.join(30)
            assert proc.exitcode == 0, "a consumer failed"
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        monitor.close()
    per_consumer = [json.loads(Path(out).read_text()) for out in outs]
    consumed = Counter(ident for seen in per_consumer for ident, _, _ in seen)
    expected = {f"p{p}-{i}" for p in range(producers) for i in range(total_per_producer)}
    assert set(consumed) == expected
    assert [ident for ident, n in consumed.items() if n > 1] == []
    assert all(count == 1 and not again for seen in per_consumer for _, count, again in seen)
    assert sum(1 for seen in per_consumer if seen) >= 2, "the load was not shared at all"


# -- (b) a consumer SIGKILLed while it holds leases ---------------------------------------------
LEASE = 1.5


def _hold(url: str, count: int, out: Any) -> None:
    """Take ``count`` messages and keep them, renewing the leases, until killed."""
    transport = SQLiteTransport(url, lease_seconds=LEASE)
    held: list[Delivery] = []
    while len(held) < count:
        held += transport.fetch(["q"], count - len(held), 5.0)
    out.put([d.message.headers["id"] for d in held])
    while True:
        transport.renew(held)
        time.sleep(LEASE / 5)


def test_leases_of_a_killed_consumer_come_back_and_never_twice_while_alive(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    consumer = SQLiteTransport(url, lease_seconds=LEASE)
    consumer.publish_many([("q", msg(f"held-{i}"), None) for i in range(5)])
    out = SPAWN.Queue()
    holder = SPAWN.Process(target=_hold, args=(url, 5, out))
    holder.start()
    try:
        held = set(out.get(timeout=60))
        assert held == {f"held-{i}" for i in range(5)}
        consumer.publish_many([("q", msg(f"free-{i}"), None) for i in range(5)])

        # for two lease periods, the live (renewing) holder keeps its messages
        received: list[Delivery] = []
        alive_until = time.monotonic() + 2 * LEASE
        while time.monotonic() < alive_until:
            got = consumer.fetch(["q"], 10, 0.2)
            consumer.ack(got)
            received += got
        assert holder.is_alive()
        assert sorted(d.message.headers["id"] for d in received) == [f"free-{i}" for i in range(5)]

        os.kill(holder.pid or 0, signal.SIGKILL)
        killed_at = time.monotonic()
        holder.join(10)
        back: list[Delivery] = []
        while len(back) < 5 and time.monotonic() - killed_at < LEASE + 10:
            got = consumer.fetch(["q"], 10, 1.0)
            consumer.ack(got)
            back += got
        came_back_after = time.monotonic() - killed_at
    finally:
        if holder.is_alive():
            holder.kill()
        out.close()
    assert sorted(d.message.headers["id"] for d in back) == sorted(held)
    assert all(d.redelivered and d.delivery_count == 2 for d in back)
    assert came_back_after <= LEASE + 1.5, f"redelivered {came_back_after:.2f} s after the kill"
    assert consumer.qsize("q") == 0
    consumer.close()
