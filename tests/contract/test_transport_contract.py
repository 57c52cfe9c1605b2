"""The transport contract (``celeriac.transports.base``), run against every registered driver.

Timing: nothing here sleeps to "let things happen". Waits are a blocking ``fetch`` with a
deadline, an ``Event`` with a deadline, or a short wait that *asserts* something is still blocked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery, ThreadedAsyncTransport, Transport

MakeTransport = Callable[..., Transport]
Background = Callable[[Callable[[], Any]], Any]

#: upper bound for anything that should happen "at once" or by a deadline (generous for CI)
SOON = 5.0


def msg(body: str, priority: int | None = None) -> RawMessage:
    properties: dict[str, Any] = {"delivery_tag": body}
    if priority is not None:
        properties["priority"] = priority
    return RawMessage(body=body.encode(), headers={"id": body}, properties=properties)


def bodies(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.message.body.decode() for d in deliveries]


def fetch_until(
    transport: Transport, queues: Sequence[str], count: int = 1, timeout: float = SOON
) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``timeout`` passed (each fetch blocks)."""
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        got += transport.fetch(queues, count - len(got), min(remaining, 1.0))
    return got


# -- publish / fetch ---------------------------------------------------------------------------
def test_publish_fetch_is_fifo(transport: Transport) -> None:
    for name in ("a", "b", "c", "d"):
        transport.publish("q", msg(name))
    got = fetch_until(transport, ["q"], 4)
    assert bodies(got) == ["a", "b", "c", "d"]
    assert all(d.queue == "q" for d in got)
    assert all(d.delivery_count == 1 and not d.redelivered for d in got)
    assert len({d.tag for d in got}) == 4


def test_message_round_trips_unchanged(transport: Transport) -> None:
    sent = RawMessage(
        body=b'[[2, 3], {}, {"callbacks": null}]',
        content_type="application/json",
        content_encoding="utf-8",
        headers={"id": "t1", "task": "add", "retries": 0, "eta": None},
        properties={"correlation_id": "t1", "reply_to": "r", "priority": 3, "delivery_mode": 2},
    )
    transport.publish("q", sent)
    [got] = fetch_until(transport, ["q"])
    assert got.message.body == sent.body
    assert got.message.content_type == sent.content_type
    assert got.message.content_encoding == sent.content_encoding
    assert got.message.headers == sent.headers
    for key in ("correlation_id", "reply_to", "priority"):
        assert got.message.properties[key] == sent.properties[key]


def test_fetch_respects_limit(transport: Transport) -> None:
    for i in range(5):
        transport.publish("q", msg(f"m{i}"))
    first = transport.fetch(["q"], 2, 1.0)
    assert 1 <= len(first) <= 2
    rest = fetch_until(transport, ["q"], 5 - len(first))
    assert bodies(first + rest) == [f"m{i}" for i in range(5)]


def test_fetch_timeout_returns_empty_within_bounds(transport: Transport) -> None:
    start = time.monotonic()
    assert transport.fetch(["q"], 1, 0.3) == []
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 3.0


def test_fetch_zero_timeout_does_not_wait(transport: Transport) -> None:
    start = time.monotonic()
    assert transport.fetch(["q"], 1, 0) == []
    assert time.monotonic() - start < 1.0


def test_queues_are_separate(transport: Transport) -> None:
    transport.publish("a", msg("for-a"))
    transport.publish("b", msg("for-b"))
    assert bodies(transport.fetch(["c"], 10, 0.1)) == []
    assert bodies(fetch_until(transport, ["b"])) == ["for-b"]
    got = fetch_until(transport, ["b", "a"])
    assert [(d.queue, d.message.body) for d in got] == [("a", b"for-a")]


def test_fetch_serves_several_queues(transport: Transport) -> None:
    transport.publish("a", msg("a1"))
    transport.publish("b", msg("b1"))
    transport.publish("a", msg("a2"))
    got = fetch_until(transport, ["a", "b"], 3)
    assert sorted(bodies(got)) == ["a1", "a2", "b1"]
    assert {d.message.body.decode(): d.queue for d in got} == {"a1": "a", "a2": "a", "b1": "b"}
    assert bodies([d for d in got if d.queue == "a"]) == ["a1", "a2"]


def test_blocking_fetch_is_woken_by_publish_from_another_thread(
    make_transport: MakeTransport, background: Background
) -> None:
    consumer, producer = make_transport(), make_transport()
    waiter = background(lambda: consumer.fetch(["q"], 1, 10.0))
    assert not waiter.wait(0.2), "fetch returned although nothing was published"
    producer.publish("q", msg("hello"))
    got = waiter.value(SOON)
    assert bodies(got) == ["hello"]
    assert waiter.elapsed < SOON


def test_wake_interrupts_a_blocked_fetch(transport: Transport, background: Background) -> None:
    if type(transport).wake is Transport.wake:
        pytest.skip("driver does not implement the optional wake()")
    waiter = background(lambda: transport.fetch(["q"], 1, 10.0))
    assert not waiter.wait(0.2), "fetch returned although nothing was published"
    transport.wake()
    assert waiter.value(SOON) == []
    # the next fetch is not affected by the earlier wake
    transport.publish("q", msg("later"))
    assert bodies(fetch_until(transport, ["q"])) == ["later"]


def test_publish_many(transport: Transport) -> None:
    future = time.time() + 60
    transport.publish_many(
        [("q", msg("m1"), None), ("other", msg("o1"), None), ("q", msg("later"), future)]
    )
    transport.publish_many([])
    assert transport.qsize("q") == 2
    assert transport.qsize("other") == 1
    assert bodies(fetch_until(transport, ["q", "other"], 2)) in (["m1", "o1"], ["o1", "m1"])
    assert transport.fetch(["q"], 1, 0.1) == []


def test_publish_many_keeps_order_across_queues_and_priorities(transport: Transport) -> None:
    # interleaved queues and priorities: each queue still serves its messages in publish order
    items = [(q, msg(f"{q}{i}", 9 if i % 3 == 0 else None), None) for i in range(9) for q in "ab"]
    transport.publish_many(items)
    transport.publish("a", msg("a-last"))
    got_a = bodies(fetch_until(transport, ["a"], 10))
    got_b = bodies(fetch_until(transport, ["b"], 9))
    plain = [f"{{}}{i}" for i in range(9) if i % 3]  # priority 0: served before 9
    nines = [f"{{}}{i}" for i in range(9) if not i % 3]
    assert got_a == [b.format("a") for b in plain] + ["a-last"] + [b.format("a") for b in nines]
    assert got_b == [b.format("b") for b in plain + nines]


# -- ack / requeue -----------------------------------------------------------------------------
def test_ack_removes_for_good(make_transport: MakeTransport) -> None:
    transport = make_transport(lease_seconds=0.3)
    transport.publish("q", msg("a"))
    [delivery] = fetch_until(transport, ["q"])
    assert transport.qsize("q") == 1
    transport.ack([delivery])
    assert transport.qsize("q") == 0
    # not even an expired lease brings it back
    assert transport.fetch(["q"], 1, 0.8) == []
    assert transport.queues() == []


def test_ack_of_unknown_or_twice_is_a_noop(transport: Transport) -> None:
    transport.publish("q", msg("a"))
    transport.ack([Delivery(tag="no-such-tag", queue="q", message=msg("a"))])
    transport.ack([])
    assert transport.qsize("q") == 1
    [delivery] = fetch_until(transport, ["q"])
    transport.ack([delivery])
    transport.ack([delivery])
    assert transport.qsize("q") == 0


def test_requeue_returns_at_once_restores_the_count_marks_redelivered(
    make_transport: MakeTransport,
) -> None:
    transport, other = make_transport(), make_transport()
    transport.publish("q", msg("a"))
    transport.publish("q", msg("b"))
    first = fetch_until(transport, ["q"], 2)
    assert [d.delivery_count for d in first] == [1, 1]
    transport.requeue(first)
    start = time.monotonic()
    again = fetch_until(other, ["q"], 2)
    assert time.monotonic() - start < SOON
    assert bodies(again) == ["a", "b"]
    assert [(d.delivery_count, d.redelivered) for d in again] == [(1, True), (1, True)]
    other.ack(again)
    assert transport.qsize("q") == 0


# -- leases ------------------------------------------------------------------------------------
def test_lease_blocks_other_consumers_then_expires(make_transport: MakeTransport) -> None:
    lease = 0.5
    transport, other = make_transport(lease_seconds=lease), make_transport(lease_seconds=lease)
    transport.publish("q", msg("a"))
    leased_at = time.monotonic()
    [first] = fetch_until(transport, ["q"])
    assert (first.delivery_count, first.redelivered) == (1, False)
    assert other.fetch(["q"], 1, 0) == []
    [second] = fetch_until(other, ["q"])
    assert time.monotonic() - leased_at >= lease * 0.8
    assert bodies([second]) == ["a"]
    assert (second.delivery_count, second.redelivered) == (2, True)
    other.ack([second])
    # the first consumer's late ack is a no-op, and nothing comes back
    transport.ack([first])
    assert transport.qsize("q") == 0
    assert other.fetch(["q"], 1, 0.7) == []


def test_renew_keeps_the_lease_past_its_original_end(make_transport: MakeTransport) -> None:
    lease = 0.6
    holder, other = make_transport(lease_seconds=lease), make_transport(lease_seconds=lease)
    holder.publish("q", msg("a"))
    [delivery] = fetch_until(holder, ["q"])
    held_until = time.monotonic() + 2.5 * lease
    while time.monotonic() < held_until:
        holder.renew([delivery])
        # each short fetch is both the pacing and the check that nobody else gets it
        assert other.fetch(["q"], 1, lease / 4) == []
    holder.renew([])
    # once renewals stop, the lease runs out and the message is delivered again
    [again] = fetch_until(other, ["q"])
    assert (again.delivery_count, again.redelivered) == (2, True)
    other.ack([again])
    assert holder.qsize("q") == 0


def test_each_message_goes_to_exactly_one_consumer(make_transport: MakeTransport) -> None:
    total, consumers = 200, 4
    producer = make_transport()
    producer.publish_many([("q", msg(f"m{i:03}"), None) for i in range(total)])
    received: list[str] = []
    lock = threading.Lock()
    everything = threading.Event()
    barrier = threading.Barrier(consumers)

    def consume(transport: Transport) -> None:
        barrier.wait(SOON)
        deadline = time.monotonic() + 10
        while not everything.is_set() and time.monotonic() < deadline:
            got = transport.fetch(["q"], 7, 0.1)
            transport.ack(got)
            with lock:
                received.extend(bodies(got))
                if len(received) >= total:
                    everything.set()

    threads = [
        threading.Thread(target=consume, args=(make_transport(),), daemon=True)
        for _ in range(consumers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads)
    assert len(received) == total, "a message was delivered twice or not at all"
    assert sorted(received) == [f"m{i:03}" for i in range(total)]
    assert producer.qsize("q") == 0


# -- delayed messages --------------------------------------------------------------------------
def test_delayed_message_is_not_delivered_before_its_eta(transport: Transport) -> None:
    eta = time.time() + 0.6
    transport.publish("q", msg("later"), eta=eta)
    transport.publish("q", msg("now"))
    assert transport.qsize("q") == 2
    assert "q" in transport.queues()
    assert bodies(fetch_until(transport, ["q"])) == ["now"]
    assert transport.fetch(["q"], 1, 0.2) == []
    got = fetch_until(transport, ["q"])
    assert bodies(got) == ["later"]
    assert time.time() >= eta - 0.05
    assert got[0].delivery_count == 1


def test_past_eta_is_delivered_at_once(transport: Transport) -> None:
    transport.publish("q", msg("overdue"), eta=time.time() - 10)
    assert bodies(transport.fetch(["q"], 1, 1.0)) == ["overdue"]


def test_blocked_fetch_wakes_when_a_delayed_message_falls_due(
    transport: Transport, background: Background
) -> None:
    eta = time.time() + 0.4
    transport.publish("q", msg("later"), eta=eta)
    waiter = background(lambda: transport.fetch(["q"], 1, 10.0))
    got = waiter.value(SOON)
    assert bodies(got) == ["later"]
    assert time.time() >= eta - 0.05


def test_defer_turns_a_held_message_into_a_delayed_one(make_transport: MakeTransport) -> None:
    transport, other = make_transport(), make_transport()
    transport.publish("q", msg("early"))
    [delivery] = fetch_until(transport, ["q"])
    eta = time.time() + 0.5
    transport.defer(delivery, eta)
    assert transport.qsize("q") == 1
    assert other.fetch(["q"], 1, 0.2) == []
    got = fetch_until(other, ["q"])
    assert bodies(got) == ["early"]
    assert time.time() >= eta - 0.05
    assert got[0].delivery_count == 1  # deferring is not an attempt
    other.ack(got)
    transport.ack([delivery])  # the old tag is gone: a no-op
    assert transport.qsize("q") == 0


# -- priorities --------------------------------------------------------------------------------
def test_lower_priority_number_is_served_first_fifo_within(transport: Transport) -> None:
    sent = [("p9-a", 9), ("p5-a", 5), ("p0-a", 0), ("p9-b", 9), ("p0-b", 0), ("p5-b", 5)]
    for body, priority in sent:
        transport.publish("q", msg(body, priority))
    got = fetch_until(transport, ["q"], len(sent))
    assert bodies(got) == ["p0-a", "p0-b", "p5-a", "p5-b", "p9-a", "p9-b"]


def test_missing_priority_counts_as_zero(transport: Transport) -> None:
    transport.publish("q", msg("p5", 5))
    transport.publish("q", msg("none"))
    assert bodies(fetch_until(transport, ["q"], 2)) == ["none", "p5"]


# -- dead letters ------------------------------------------------------------------------------
def test_dead_letter_stores_and_requeues(transport: Transport) -> None:
    transport.publish("q", msg("bad"))
    transport.publish("q", msg("good"))
    [bad] = fetch_until(transport, ["q"])
    transport.dead_letter(bad, "boom:\nTraceback (most recent call last)")
    assert transport.qsize("q") == 1
    [letter] = transport.dead_letters()
    assert letter.queue == "q"
    assert letter.message.body == b"bad"
    assert "boom" in letter.reason and "\n" not in letter.reason
    assert abs(letter.failed_at - time.time()) < 60
    assert letter.delivery_count == 1
    transport.ack([bad])  # already gone: a no-op
    assert transport.requeue_dead_letters() == 1
    assert transport.dead_letters() == []
    got = fetch_until(transport, ["q"], 2)
    assert sorted(bodies(got)) == ["bad", "good"]
    assert all(d.delivery_count == 1 for d in got)


def test_dead_letters_by_id(transport: Transport) -> None:
    for name in ("x", "y", "z"):
        transport.publish("q", msg(name))
    for delivery in fetch_until(transport, ["q"], 3):
        transport.dead_letter(delivery, f"failed {delivery.message.body.decode()}")
    letters = transport.dead_letters()
    assert sorted(d.message.body for d in letters) == [b"x", b"y", b"z"]
    assert len(transport.dead_letters(limit=2)) == 2
    by_body = {d.message.body: d.id for d in letters}
    assert transport.requeue_dead_letters([by_body[b"y"], "no-such-id"]) == 1
    assert bodies(fetch_until(transport, ["q"])) == ["y"]
    assert transport.purge_dead_letters([by_body[b"x"]]) == 1
    assert [d.message.body for d in transport.dead_letters()] == [b"z"]
    assert transport.purge_dead_letters() == 1
    assert transport.dead_letters() == []
    assert transport.requeue_dead_letters() == 0
    assert transport.purge_dead_letters(["no-such-id"]) == 0


# -- management --------------------------------------------------------------------------------
def test_qsize_counts_ready_delayed_and_held(transport: Transport) -> None:
    assert transport.qsize("q") == 0
    transport.publish("q", msg("held"))
    transport.publish("q", msg("ready"))
    transport.publish("q", msg("delayed"), eta=time.time() + 60)
    [held] = transport.fetch(["q"], 1, 1.0)
    assert bodies([held]) == ["held"]
    assert transport.qsize("q") == 3
    assert transport.qsize("other") == 0
    transport.ack([held])
    assert transport.qsize("q") == 2


def test_purge_removes_ready_and_delayed_not_held(transport: Transport) -> None:
    transport.publish("q", msg("held"))
    transport.publish("q", msg("ready"))
    transport.publish("q", msg("delayed"), eta=time.time() + 60)
    transport.publish("keep", msg("other queue"))
    [held] = transport.fetch(["q"], 1, 1.0)
    assert transport.purge("q") == 2
    assert transport.qsize("q") == 1
    assert transport.qsize("keep") == 1
    assert transport.purge("q") == 0
    assert transport.purge("empty") == 0
    transport.ack([held])
    assert transport.qsize("q") == 0


def test_queues_lists_names_that_hold_anything(transport: Transport) -> None:
    assert transport.queues() == []
    transport.publish("a", msg("a"))
    transport.publish("b", msg("b"))
    transport.publish("c", msg("c"), eta=time.time() + 60)
    assert sorted(transport.queues()) == ["a", "b", "c"]
    [held] = fetch_until(transport, ["a"])
    assert "a" in transport.queues()
    transport.ack([held])
    transport.purge("c")
    assert sorted(transport.queues()) == ["b"]


def test_close_is_idempotent(make_transport: MakeTransport) -> None:
    transport = make_transport()
    transport.close()
    transport.close()
    assert isinstance(transport.describe(), str)


# -- the worker's async view -------------------------------------------------------------------
def test_threaded_async_adapter(make_transport: MakeTransport) -> None:
    producer = make_transport()
    adapter = ThreadedAsyncTransport(make_transport())

    async def scenario() -> None:
        await adapter.publish("q", msg("one"))
        await adapter.publish_many([("q", msg("two"), None)])
        got = await adapter.fetch(["q"], 10, SOON)
        while len(got) < 2:
            got += await adapter.fetch(["q"], 10, SOON)
        assert bodies(got) == ["one", "two"]
        await adapter.renew(got)
        await adapter.ack(got[:1])
        await adapter.requeue(got[1:])
        [again] = await adapter.fetch(["q"], 1, SOON)
        assert (again.message.body, again.delivery_count) == (b"two", 1)
        await adapter.dead_letter(again, "bad")
        assert await adapter.qsize("q") == 0
        # a fetch blocked on the fetch thread never holds up the I/O thread
        pending = asyncio.ensure_future(adapter.fetch(["q"], 1, SOON))
        await asyncio.wait_for(adapter.publish("q", msg("three")), SOON)
        assert bodies(await asyncio.wait_for(pending, SOON)) == ["three"]
        await adapter.close()

    asyncio.run(scenario())
    assert [d.message.body for d in producer.dead_letters()] == [b"two"]
    assert producer.qsize("q") == 1  # "three" is still held by the adapter's lease
    assert adapter.describe() == producer.describe()
