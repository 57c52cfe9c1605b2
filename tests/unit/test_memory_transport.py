"""What the in-memory broker promises beyond the shared contract (see its module docstring)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage
from celeriac.transports import memory
from celeriac.transports.memory import MemoryTransport, broker_name, reset_brokers
from celeriac.transports.urls import create_transport


def msg(body: str) -> RawMessage:
    return RawMessage(body=body.encode())


@pytest.fixture
def url() -> Iterator[str]:
    name = f"unit-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    reset_brokers(name)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("memory://", ""),
        ("memory:///", ""),
        ("memory://jobs", "jobs"),
        ("memory://jobs/", "jobs"),
        ("memory://jobs?x=1", "jobs"),
        ("memory://a/b", "a/b"),
    ],
)
def test_broker_name(url: str, name: str) -> None:
    assert broker_name(url) == name


def test_same_name_shares_state_other_names_do_not(url: str) -> None:
    first = create_transport(url)
    assert isinstance(first, MemoryTransport)
    second = MemoryTransport(url + "/")
    stranger = MemoryTransport(url + "-other")
    first.publish("q", msg("a"))
    assert second.qsize("q") == 1
    assert stranger.qsize("q") == 0
    assert [d.message.body for d in second.fetch(["q"], 1, 0)] == [b"a"]


def test_the_message_object_is_stored_as_given(url: str) -> None:
    transport = MemoryTransport(url)
    sent = msg("a")
    transport.publish("q", sent)
    [delivery] = transport.fetch(["q"], 1, 0)
    assert delivery.message is sent


def test_reset_brokers_drops_the_state(url: str) -> None:
    MemoryTransport(url).publish("q", msg("a"))
    reset_brokers(broker_name(url))
    assert MemoryTransport(url).qsize("q") == 0


def test_fetch_after_close_returns_at_once_others_carry_on(url: str) -> None:
    closed, other = MemoryTransport(url), MemoryTransport(url)
    closed.publish("q", msg("a"))
    closed.close()
    start = time.monotonic()
    assert closed.fetch(["q"], 1, 5.0) == []
    assert time.monotonic() - start < 0.5
    assert [d.message.body for d in other.fetch(["q"], 1, 0)] == [b"a"]


def test_fetch_with_nothing_to_ask_for_returns_at_once(url: str) -> None:
    transport = MemoryTransport(url)
    transport.publish("q", msg("a"))
    assert transport.fetch(["q"], 0, 5.0) == []
    assert transport.fetch([], 1, 5.0) == []
    assert transport.qsize("q") == 1


def test_blocked_fetch_waits_without_spinning(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = MemoryTransport(url)
    cond = memory._broker(broker_name(url)).cond
    calls: list[float | None] = []
    real_wait = cond.wait

    def counting_wait(timeout: float | None = None) -> bool:
        calls.append(timeout)
        return real_wait(timeout)

    monkeypatch.setattr(cond, "wait", counting_wait)
    assert transport.fetch(["q"], 1, 0.3) == []
    assert 1 <= len(calls) <= 3


def test_blocked_fetch_wakes_when_a_lease_runs_out(url: str) -> None:
    holder = MemoryTransport(url, lease_seconds=0.3)
    holder.publish("q", msg("a"))
    holder.fetch(["q"], 1, 0)
    start = time.monotonic()
    [again] = MemoryTransport(url).fetch(["q"], 1, 10.0)
    assert 0.2 <= time.monotonic() - start < 2.0
    assert (again.delivery_count, again.redelivered) == (2, True)


def test_expired_lease_is_taken_back_by_a_fetch_of_any_queue(url: str) -> None:
    holder = MemoryTransport(url, lease_seconds=0.2)
    holder.publish("q", msg("a"))
    holder.fetch(["q"], 1, 0)
    other = MemoryTransport(url)
    assert other.fetch(["elsewhere"], 1, 0.4) == []
    assert [d.redelivered for d in other.fetch(["q"], 1, 0)] == [True]


def test_holder_keeps_an_expired_lease_until_a_fetch_takes_it(url: str) -> None:
    holder = MemoryTransport(url, lease_seconds=0.1)
    holder.publish("q", msg("renewed"))
    holder.publish("q", msg("acked"))
    renewed, acked = holder.fetch(["q"], 2, 0)
    time.sleep(0.15)  # a clock wait, not a synchronisation: no other thread is involved
    state = memory._broker(broker_name(url))
    assert all(lease.deadline < time.monotonic() for lease in state.held.values())
    holder.ack([acked])
    holder.lease_seconds = 30.0
    holder.renew([renewed])
    assert MemoryTransport(url).fetch(["q"], 1, 0.3) == []
    assert holder.qsize("q") == 1


def test_requeue_marks_redelivered_and_keeps_the_place_in_line(url: str) -> None:
    transport = MemoryTransport(url)
    transport.publish("q", msg("old"))
    [old] = transport.fetch(["q"], 1, 0)
    transport.publish("q", msg("new"))
    transport.requeue([old])
    got = transport.fetch(["q"], 2, 0)
    assert [(d.message.body, d.delivery_count, d.redelivered) for d in got] == [
        (b"old", 1, True),
        (b"new", 1, False),
    ]


def test_defer_restores_the_delivery_count(url: str) -> None:
    transport = MemoryTransport(url)
    transport.publish("q", msg("a"))
    [first] = transport.fetch(["q"], 1, 0)
    transport.defer(first, time.time() - 1)  # already due: ready at once
    [again] = transport.fetch(["q"], 1, 0)
    assert again.delivery_count == 1


def test_requeued_dead_letter_starts_afresh(url: str) -> None:
    transport = MemoryTransport(url)
    transport.publish("q", msg("a"))
    for _ in range(3):
        [delivery] = transport.fetch(["q"], 1, 0)
        transport.dead_letter(delivery, "  first line \n\n second line  ")
        [letter] = transport.dead_letters()
        assert letter.reason == "first line second line"
        assert transport.requeue_dead_letters([letter.id]) == 1
    [fresh] = transport.fetch(["q"], 1, 0)
    assert (fresh.delivery_count, fresh.redelivered) == (1, False)


def test_dead_letter_of_unknown_delivery_is_a_noop(url: str) -> None:
    transport = MemoryTransport(url)
    transport.publish("q", msg("a"))
    [delivery] = transport.fetch(["q"], 1, 0)
    transport.ack([delivery])
    transport.dead_letter(delivery, "late")
    assert transport.dead_letters() == []


def test_lease_bookkeeping_is_compacted(url: str) -> None:
    transport = MemoryTransport(url)
    total = 3000
    transport.publish_many([("q", msg(str(i)), None) for i in range(total)])
    for delivery in transport.fetch(["q"], total, 0):
        transport.ack([delivery])
    state = memory._broker(broker_name(url))
    assert state.held == {}
    assert len(state.lease_heap) <= memory._COMPACT_SLACK + 1


def test_wake_before_fetch_does_not_cancel_it(url: str) -> None:
    transport = MemoryTransport(url)
    transport.wake()
    result: list[Any] = []
    start = time.monotonic()
    result.extend(transport.fetch(["q"], 1, 0.2))
    assert result == []
    assert time.monotonic() - start >= 0.15


def test_renewals_do_not_pile_up_in_the_lease_bookkeeping(url: str) -> None:
    transport = MemoryTransport(url)
    transport.publish("q", msg("a"))
    [delivery] = transport.fetch(["q"], 1, 0)
    for _ in range(3 * memory._COMPACT_SLACK):
        transport.renew([delivery])
    state = memory._broker(broker_name(url))
    assert len(state.lease_heap) <= memory._COMPACT_SLACK + 3
    assert list(state.held) == [delivery.tag]
