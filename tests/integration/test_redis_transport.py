"""The Redis broker against a real Redis: kombu's wire layout, crash safety, leases, delays.

Redis URL from ``CELERIAC_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/9``); skipped when
unreachable, failed under ``CI=true``. Nothing is flushed: every test uses its own
``global_keyprefix`` and deletes only its own keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage, loads_envelope
from celeriac.transports.base import Delivery
from celeriac.transports.redis import AsyncRedisTransport, RedisTransport

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "celery-wire"
SOON = 5.0


def _fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture
def make(prefix: str) -> Iterator[Callable[..., RedisTransport]]:
    opened: list[RedisTransport] = []

    def factory(visibility_timeout: float = 30.0, **options: Any) -> RedisTransport:
        options = {"global_keyprefix": prefix, "visibility_timeout": visibility_timeout, **options}
        transport = RedisTransport(URL, options=options)
        opened.append(transport)
        return transport

    yield factory
    for transport in opened:
        transport.close()


def msg(body: str, priority: int | None = None) -> RawMessage:
    properties: dict[str, Any] = {"correlation_id": body}
    if priority is not None:
        properties["priority"] = priority
    return RawMessage(body=body.encode(), headers={"id": body}, properties=properties)


def fetch_until(
    t: RedisTransport, queues: list[str], count: int, timeout: float = SOON
) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count and (remaining := deadline - time.monotonic()) > 0:
        got += t.fetch(queues, count - len(got), min(remaining, 1.0))
    return got


# -- wire compatibility ------------------------------------------------------------------------
def test_celery_client_message_is_fetched_and_recorded_in_kombus_shape(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    captured = _fixture("redis-task-add.json")
    raw: str = captured["raw"]
    client.lpush(prefix + "celery", raw)
    transport = make()
    before = time.time()
    [delivery] = fetch_until(transport, ["celery"], 1)
    expected = loads_envelope(raw)
    assert delivery.tag == expected.delivery_tag
    assert delivery.message == expected.message
    assert delivery.message.headers["task"] == "wireapp.add"
    assert (delivery.delivery_count, delivery.redelivered) == (1, False)
    # kombu's unacked entry: JSON [envelope, exchange, routing_key], scored by delivery time
    entry = json.loads(client.hget(prefix + "unacked", delivery.tag))
    assert entry == [json.loads(raw), "", "celery"]
    score = client.zscore(prefix + "unacked_index", delivery.tag)
    assert before - 1 <= score <= time.time() + 1
    transport.ack([delivery])
    assert client.hget(prefix + "unacked", delivery.tag) is None
    assert client.zscore(prefix + "unacked_index", delivery.tag) is None


def test_publish_uses_kombus_lists_priority_steps_and_binding(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    transport = make()
    transport.publish("celery", msg("p0"))
    transport.publish("celery", msg("p5", priority=5))
    transport.publish("celery", msg("p9", priority=9))
    assert client.llen(prefix + "celery") == 1
    assert client.llen(prefix + "celery\x06\x163") == 1
    assert client.llen(prefix + "celery\x06\x169") == 1
    member = b"celery\x06\x16\x06\x16celery"
    assert client.smembers(prefix + "_kombu.binding.celery") == {member}
    stored = json.loads(client.lindex(prefix + "celery\x06\x163", 0))
    assert stored["properties"]["priority"] == 5
    assert stored["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert stored["properties"]["body_encoding"] == "base64"
    got = fetch_until(transport, ["celery"], 3)
    assert [d.message.body for d in got] == [b"p0", b"p5", b"p9"]


def test_restore_uses_kombus_redelivered_flags_and_rpush(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    dead = make(visibility_timeout=0.5)
    for name in ("a", "b"):
        dead.publish("q", msg(name))
    [held] = dead.fetch(["q"], 1, 1.0)  # "a", never acked: its consumer "dies"
    client.zadd(prefix + "unacked_index", {held.tag: time.time() - 10})
    restorer = make(visibility_timeout=0.5)
    assert restorer.restore_expired() == 1
    front = json.loads(client.lindex(prefix + "q", -1))  # the consuming end: next out
    assert front["headers"]["redelivered"] is True
    assert front["properties"]["delivery_info"]["redelivered"] is True
    assert front["properties"]["delivery_tag"] == held.tag
    [again] = restorer.fetch(["q"], 1, 1.0)
    assert (again.message.body, again.redelivered, again.delivery_count) == (b"a", True, 2)
    dead.ack([held])  # the old holder's lease is gone: its ack must not touch the new delivery
    assert client.hexists(prefix + "unacked", again.tag)


# -- leases ------------------------------------------------------------------------------------
def test_renewed_delivery_is_never_handed_out_again(make: Callable[..., RedisTransport]) -> None:
    holder, rival = make(visibility_timeout=1.0), make(visibility_timeout=1.0)
    holder.publish("q", msg("long"))
    [held] = holder.fetch(["q"], 1, 1.0)
    deadline = time.monotonic() + 4.0  # four visibility timeouts
    while time.monotonic() < deadline:
        holder.renew([held])
        assert rival.fetch(["q"], 1, 0.3) == []
        rival.restore_expired()
    holder.ack([held])
    assert rival.fetch(["q"], 1, 0.2) == []
    assert rival.qsize("q") == 0


CONSUMER = textwrap.dedent(
    """
    import sys, time
    from celeriac.transports.redis import RedisTransport
    url, prefix = sys.argv[1], sys.argv[2]
    t = RedisTransport(url, options={"global_keyprefix": prefix, "visibility_timeout": 1.5})
    got = []
    while len(got) < 3:
        got += t.fetch(["q"], 3 - len(got), 1.0)
    print(" ".join(d.tag for d in got), flush=True)
    time.sleep(60)
    """
)


def test_sigkill_of_a_consumer_loses_nothing(
    make: Callable[..., RedisTransport], prefix: str
) -> None:
    producer = make(visibility_timeout=1.5)
    for name in ("a", "b", "c", "d"):
        producer.publish("q", msg(name))
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, URL, prefix], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        tags = proc.stdout.readline().split()
        assert len(tags) == 3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    killed_at = time.monotonic()
    seen: dict[bytes, Delivery] = {}
    deadline = killed_at + 10.0
    while len(seen) < 4 and time.monotonic() < deadline:
        got = producer.fetch(["q"], 4, 1.0)
        producer.ack(got)
        seen.update((d.message.body, d) for d in got)
    assert sorted(seen) == [b"a", b"b", b"c", b"d"]
    assert {d.tag for d in seen.values() if d.redelivered} == set(tags)
    assert time.monotonic() - killed_at < 1.5 + 2.0  # visibility timeout + a restore interval
    assert producer.qsize("q") == 0


# -- delays, dead letters, counters ------------------------------------------------------------
def test_delayed_message_waits_in_the_broker(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    transport = make()
    eta = time.time() + 0.6
    transport.publish("q", msg("later"), eta=eta)
    assert client.zcard(prefix + "q\x06\x16celeriac.delayed") == 1
    assert transport.qsize("q") == 1
    [got] = fetch_until(transport, ["q"], 1)
    assert time.time() >= eta - 0.05
    assert got.message.body == b"later"
    assert client.zcard(prefix + "q\x06\x16celeriac.delayed") == 0


def test_dead_letter_and_delivery_counter_keys(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    transport = make()
    transport.publish("q", msg("bad"))
    [got] = transport.fetch(["q"], 1, 1.0)
    assert client.hget(prefix + "celeriac.deliveries", got.tag) == b"1"
    transport.dead_letter(got, "boom\ntraceback")
    assert client.hget(prefix + "celeriac.deliveries", got.tag) is None
    record = json.loads(client.hget(prefix + "celeriac.dead_letters", got.tag))
    assert (record["queue"], record["reason"], record["delivery_count"]) == ("q", "boom", 1)
    [letter] = transport.dead_letters()
    assert letter.message.body == b"bad"
    assert transport.requeue_dead_letters() == 1
    [again] = transport.fetch(["q"], 1, 1.0)
    assert again.delivery_count == 1


def test_garbage_on_a_queue_is_dead_lettered_not_lost(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    client.lpush(prefix + "q", b"not json", b'{"body": "x", "properties": {"delivery_tag": "t"}}')
    transport = make()
    assert transport.fetch(["q"], 10, 0.2) == []
    letters = transport.dead_letters()
    assert len(letters) == 2
    assert client.hlen(prefix + "unacked") == 0


def test_wake_interrupts_a_blocked_fetch(make: Callable[..., RedisTransport]) -> None:
    import threading

    transport = make(poll_interval=10.0)
    transport.fetch(["q"], 1, 0)  # connect
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(transport.fetch(["q"], 1, 20.0)))
    start = time.monotonic()
    thread.start()
    time.sleep(0.2)  # let it block (the assertion below is the deadline)
    transport.wake()
    thread.join(SOON)
    assert not thread.is_alive()
    assert result == [[]]
    assert time.monotonic() - start < 2.0


# -- the async driver --------------------------------------------------------------------------
def test_async_driver_round_trip(prefix: str, make: Callable[..., RedisTransport]) -> None:
    sync = make()

    async def main() -> None:
        transport = AsyncRedisTransport(URL, options={"global_keyprefix": prefix})
        try:
            waiting = asyncio.ensure_future(transport.fetch(["q"], 5, 5.0))
            await asyncio.sleep(0.1)
            await transport.publish_many([("q", msg("x"), None), ("q", msg("y"), None)])
            got = await waiting
            got += await transport.fetch(["q"], 5, 0.5) if len(got) < 2 else []
            assert [d.message.body for d in got] == [b"x", b"y"]
            await transport.renew(got)
            await transport.requeue(got[1:])
            await transport.ack(got[:1])
            assert await transport.qsize("q") == 1
        finally:
            await transport.close()

    asyncio.run(main())
    [left] = sync.fetch(["q"], 1, 1.0)
    assert (left.message.body, left.redelivered) == (b"y", True)


# -- batches -----------------------------------------------------------------------------------
def test_one_ack_settles_many_across_queues_and_skips_stale_leases(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    holder, rival = make(), make()
    for queue in ("q1", "q2"):
        holder.publish_many([(queue, msg(f"{queue}-{p}", priority=p), None) for p in (0, 3, 9)])
    got = fetch_until(holder, ["q1", "q2"], 6)
    assert len(got) == 6
    stale = got[0]  # its lease runs out and a rival is handed the message
    client.zadd(prefix + "unacked_index", {stale.tag: time.time() - 100})
    assert rival.restore_expired() == 1
    [again] = rival.fetch(["q1", "q2"], 1, 1.0)
    assert again.tag == stale.tag
    holder.ack(got)  # one script call: the five still held go, the stale one is left alone
    assert client.hkeys(prefix + "unacked") == [stale.tag.encode()]
    rival.ack([again])
    assert client.hlen(prefix + "unacked") == 0
    assert client.zcard(prefix + "unacked_index") == 0
    assert client.hlen(prefix + "celeriac.deliveries") == 0
    assert holder.qsize("q1") == holder.qsize("q2") == 0


def test_batched_requeue_keeps_order_and_renew_covers_all(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    transport = make()
    transport.publish_many([("q", msg(name), None) for name in "abcd"])
    got = fetch_until(transport, ["q"], 4)
    old = time.time() - 50
    client.zadd(prefix + "unacked_index", {d.tag: old for d in got})
    transport.renew(got)
    assert all(
        s > old + 40 for _, s in client.zrange(prefix + "unacked_index", 0, -1, withscores=True)
    )
    transport.requeue(got[:3])
    transport.ack(got[3:])
    again = fetch_until(transport, ["q"], 3)
    assert [d.message.body for d in again] == [b"a", b"b", b"c"]
    assert all(d.redelivered and d.delivery_count == 1 for d in again)
    transport.ack(again)
    assert transport.qsize("q") == 0


def test_close_interrupts_a_blocked_fetch_without_an_outage(
    make: Callable[..., RedisTransport], caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import threading

    caplog.set_level(logging.WARNING, logger="celeriac")
    transport = make(poll_interval=10.0)
    transport.fetch(["q"], 1, 0)  # connect
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(transport.fetch(["q"], 1, 20.0)))
    thread.start()
    deadline = time.monotonic() + SOON
    while transport._blocker is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # in BLMOVE by now, most likely; either way close must end the fetch
    transport.close()
    thread.join(SOON)
    assert not thread.is_alive() and result == [[]]
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


# -- broker_transport_options with Celery's names ----------------------------------------------
def test_custom_priority_steps_and_sep_on_the_wire(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    """``priority_steps=[0, 5]``, ``sep=":"``: kombu rounds each priority down to a step."""
    transport = make(priority_steps=[0, 5], sep=":")
    for body, priority in (("p4", 4), ("p9", 9), ("p0", 0), ("p5", 5)):
        transport.publish("celery", msg(body, priority=priority))
    assert client.llen(prefix + "celery") == 2  # priorities 0-4
    assert client.llen(prefix + "celery:5") == 2  # priorities 5-9
    assert client.smembers(prefix + "_kombu.binding.celery") == {b"celery::celery"}
    got = fetch_until(transport, ["celery"], 4)
    # the lower step first; within a step, in publishing order (kombu's LPUSH/BRPOP)
    assert [d.message.body for d in got] == [b"p4", b"p0", b"p9", b"p5"]
    transport.ack(got)
    assert client.hlen(prefix + "unacked") == 0


def test_client_options_reach_the_connection(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    """Socket options and ``client_name`` go to redis-py unchanged (Celery's names)."""
    name = f"celeriac-{prefix.rstrip(':')}"
    transport = make(socket_timeout=7.5, socket_connect_timeout=2.5, client_name=name)
    transport.publish("q", msg("x"))
    [got] = transport.fetch(["q"], 1, 1.0)
    transport.ack([got])
    names = [c.get("name") for c in client.client_list()]
    assert name in names
    kwargs = transport._client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.5, 2.5)


def test_publish_many_batches_pushes_and_keeps_order(
    make: Callable[..., RedisTransport], client: Any, prefix: str
) -> None:
    """Runs of messages for one list go in one LPUSH of many values: the lists end up as with
    one LPUSH each (FIFO per queue, across runs, across the batch limit)."""
    from celeriac.transports.redis import PUSH_BATCH

    transport = make()
    names = [f"m{i:04}" for i in range(PUSH_BATCH + 5)]
    items = [("q", msg(n), None) for n in names[:3]] + [("r", msg("r1"), None)]
    items += [("q", msg(n), None) for n in names[3:]] + [("r", msg("r2"), None)]
    transport.publish_many(items)

    def ids(key: str) -> list[str]:  # oldest first: consumers RPOP
        return [
            json.loads(x)["headers"]["id"] for x in reversed(client.lrange(prefix + key, 0, -1))
        ]

    assert ids("q") == names
    assert ids("r") == ["r1", "r2"]


@pytest.mark.parametrize("pause", [0.0, 0.2])
def test_after_a_partial_take_the_next_fetch_waits_first_unless_it_paused(
    prefix: str, make: Callable[..., RedisTransport], client: Any, pause: float
) -> None:
    """Right after a take that came up short, the worker's driver sends the wait with the
    take behind it (one round trip), not a take and then the wait; a message that arrived in
    between is still taken at once, a priority list's too. After a pause longer than the
    wait-first window (the worker had no room), it takes first: what came meanwhile on other
    lists is not left to the wait (which ends only at ``poll_interval``, 30 s here)."""
    producer = make()
    seen: list[str] = []
    stop = threading.Event()
    ready = threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(URL).monitor() as m:
            ready.set()
            for command in m.listen():
                if prefix in command["command"]:
                    seen.append(command["command"].split()[0].upper())
                if stop.is_set():
                    return

    async def main() -> tuple[list[str], list[str]]:
        options = {"global_keyprefix": prefix, "poll_interval": 30.0}
        transport = AsyncRedisTransport(URL, options=options)
        try:
            producer.publish("q", msg("first"))
            first = await transport.fetch(["q"], 10, 5.0)  # got 1 of 10: the lists are empty
            await transport.ack(first)
            producer.publish("q", msg("second"))
            producer.publish("q", msg("urgent", priority=9))
            if pause:
                await asyncio.sleep(pause)  # the worker's pause, as when it has no room
            second = await transport.fetch(["q"], 10, 5.0)
            await transport.ack(second)
            return [d.message.headers["id"] for d in first], [
                d.message.headers["id"] for d in second
            ]
        finally:
            await transport.close()

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    assert ready.wait(5)
    deadline = time.monotonic() + 5
    while "EXISTS" not in seen:  # MONITOR sees our commands from here on
        assert time.monotonic() < deadline, "MONITOR saw nothing"
        client.exists(f"{prefix}probe")
    try:
        first, second = asyncio.run(main())
    finally:
        stop.set()
        client.ping()
        watcher.join(5)
    assert first == ["first"]
    assert sorted(second) == ["second", "urgent"]
    publishes = [i for i, c in enumerate(seen) if c == "LPUSH"]
    after = seen[publishes[-1] + 1 :]
    expected = ["EVALSHA"] if pause else ["BLMOVE", "EVALSHA"]
    assert after[: len(expected)] == expected, seen
