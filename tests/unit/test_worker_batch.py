"""IOBatch: one loop turn's I/O in one call per kind, in order; retries; unserialisable results."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from celeriac import states
from celeriac.backends.base import AsyncResultBackend, ResultBackend
from celeriac.backends.memory import MemoryStore
from celeriac.exceptions import OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.protocol.result_meta import ResultMeta
from celeriac.transports.base import Delivery
from celeriac.worker.iobatch import IOBatch
from celeriac.worker.state import WorkerState


class FakeTransport:
    """Records calls; ``fail`` makes the next N calls of a kind raise."""

    url = "fake://"
    lease_seconds = 60.0

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.fail: dict[str, int] = {}

    def _maybe_fail(self, kind: str) -> None:
        if self.fail.get(kind, 0) > 0:
            self.fail[kind] -= 1
            raise OperationalError(f"{kind} failed")

    async def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        self._maybe_fail("publish")
        self.log.append(("publish", len(items)))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._maybe_fail("ack")
        self.log.append(("ack", [d.tag for d in deliveries]))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        self.log.append(("requeue", [d.tag for d in deliveries]))

    async def defer(self, delivery: Delivery, eta: float) -> None:
        self.log.append(("defer", delivery.tag))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.log.append(("dead_letter", delivery.tag))


class FakeBackend:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    async def store_many(self, metas: Sequence[ResultMeta]) -> None:
        self.log.append(("store", [(m.task_id, m.status) for m in metas]))


def delivery(tag: str) -> Delivery:
    return Delivery(tag, "celery", RawMessage(b"[]"))


def meta(task_id: str, status: str = states.SUCCESS, result: Any = 1) -> ResultMeta:
    return ResultMeta(task_id=task_id, status=status, result=result)


def test_one_call_per_kind_in_order_and_held_released() -> None:
    log: list[tuple[str, Any]] = []
    state = WorkerState()
    released: list[int] = []

    async def main() -> int:
        batch = IOBatch(FakeTransport(log), FakeBackend(log), state)  # type: ignore[arg-type]
        batch.on_release = lambda: released.append(1)
        for tag in ("a", "b", "c", "d"):
            state.held[tag] = delivery(tag)
        # everything queued in one loop turn, in "wrong" order on purpose
        batch.ack(delivery("a"))
        batch.store(meta("1"))
        batch.publish("celery", RawMessage(b"[]"), None)
        batch.ack(delivery("b"))
        batch.store(meta("2"))
        batch.publish("celery", RawMessage(b"[]"), None)
        batch.requeue(delivery("c"))
        batch.dead_letter(delivery("d"), "bad")
        await batch.drain()
        return batch.batches

    batches = asyncio.run(main())
    assert batches == 1
    assert log[:2] == [("publish", 2), ("store", [("1", "SUCCESS"), ("2", "SUCCESS")])]
    assert sorted(log[2:]) == [("ack", ["a", "b"]), ("dead_letter", "d"), ("requeue", ["c"])]
    assert state.held == {}
    assert released == [1]


def test_later_states_of_a_task_in_one_batch_replace_earlier_ones() -> None:
    log: list[tuple[str, Any]] = []

    async def main() -> None:
        batch = IOBatch(FakeTransport(log), FakeBackend(log), WorkerState())  # type: ignore[arg-type]
        batch.store(meta("1", states.STARTED))
        batch.store(meta("2", states.STARTED))
        batch.store(meta("1", states.SUCCESS))
        await batch.drain()

    asyncio.run(main())
    assert log == [("store", [("1", "SUCCESS"), ("2", "STARTED")])]


def test_failed_calls_are_retried_in_order() -> None:
    log: list[tuple[str, Any]] = []
    transport = FakeTransport(log)
    transport.fail = {"publish": 2}

    async def main() -> None:
        batch = IOBatch(transport, FakeBackend(log), WorkerState())  # type: ignore[arg-type]
        batch.publish("celery", RawMessage(b"[]"), None)
        batch.store(meta("1"))
        batch.ack(delivery("a"))
        await asyncio.wait_for(batch.drain(), 5)

    asyncio.run(main())
    assert log == [("publish", 1), ("store", [("1", "SUCCESS")]), ("ack", ["a"])]


def test_closing_gives_up_after_a_few_attempts() -> None:
    log: list[tuple[str, Any]] = []
    transport = FakeTransport(log)
    transport.fail = {"ack": 100}

    async def main() -> None:
        batch = IOBatch(transport, None, WorkerState())  # type: ignore[arg-type]
        batch.closing = True
        batch.ack(delivery("a"))
        await asyncio.wait_for(batch.drain(), 5)

    asyncio.run(main())
    assert log == []
    assert transport.fail["ack"] == 97


def test_no_backend_drops_results() -> None:
    log: list[tuple[str, Any]] = []

    async def main() -> None:
        batch = IOBatch(FakeTransport(log), None, WorkerState())  # type: ignore[arg-type]
        batch.store(meta("1"))
        await batch.drain()

    asyncio.run(main())
    assert log == []


def test_unserialisable_result_becomes_an_encode_error_failure() -> None:
    backend = ResultBackend(MemoryStore("memory://batch-encode"))
    state = WorkerState()
    state.bump("succeeded")

    async def main() -> None:
        batch = IOBatch(FakeTransport([]), AsyncResultBackend(backend), state)  # type: ignore[arg-type]
        batch.store(meta("good", result=5))
        batch.store(meta("bad", result=object()))
        await batch.drain()

    asyncio.run(main())
    assert backend.get_meta("good").result == 5
    bad = backend.get_meta("bad")
    assert bad.status == states.FAILURE
    assert bad.result["exc_type"] == "EncodeError"
    assert "SUCCESS result of task bad could not be serialised" in bad.result["exc_message"][0]
    assert bad.date_done is not None
    assert (state.succeeded, state.failed) == (0, 1)


def test_an_ack_queued_while_results_are_written_waits_for_its_own_result() -> None:
    log: list[tuple[str, Any]] = []
    state = WorkerState()
    gate = asyncio.Event()

    class SlowBackend(FakeBackend):
        async def store_many(self, metas: Sequence[ResultMeta]) -> None:
            if not gate.is_set():
                await gate.wait()
            await super().store_many(metas)

    async def main() -> None:
        batch = IOBatch(FakeTransport(log), SlowBackend(log), state)  # type: ignore[arg-type]
        for tag in ("a", "b"):
            state.held[tag] = delivery(tag)
        batch.store(meta("a"))
        batch.ack(delivery("a"))
        await asyncio.sleep(0)  # the first turn starts writing a's result
        batch.store(meta("b"))  # b finishes while a's result is in flight
        batch.ack(delivery("b"))
        gate.set()
        await batch.drain()

    asyncio.run(main())
    assert log == [
        ("store", [("a", states.SUCCESS)]),
        ("ack", ["a"]),
        ("store", [("b", states.SUCCESS)]),
        ("ack", ["b"]),
    ]
