"""The canvas on the wire: the messages Celeriac sends for a chain, a group and a chord (and the
chain steps and chord callback its worker publishes) have the shape of Celery 5.7's captures
(``shared/fixtures/celery-wire``): the same headers, properties and ``[args, kwargs, embed]``
bodies. Ids differ: every UUID is replaced by its order of first appearance, so the relations
between ids (root_id = id, parent_id = the previous task, the body's group_id = the header's
group) are compared too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, chain, chord, group, states
from celeriac.app.trace import Succeeded
from celeriac.protocol.envelope import RawMessage, dumps_envelope
from celeriac.protocol.message import decode
from celeriac.transports.base import Delivery
from celeriac.worker.chords import ChordPart, _completion
from celeriac.worker.execution import Execution
from celeriac.worker.request import Request, RequestReader
from celeriac.worker.state import WorkerState

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ORIGIN = re.compile(r"^gen\d+@.+$")


def fixture(shared_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((shared_dir / "fixtures" / "celery-wire" / name).read_text())
    return data


def normalized(value: Any, seen: dict[str, str] | None = None) -> Any:
    """``value`` with UUIDs numbered by first appearance and the client origin blanked."""
    seen = {} if seen is None else seen
    if isinstance(value, dict):
        return {k: normalized(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v, seen) for v in value]
    if isinstance(value, str) and UUID.match(value):
        return seen.setdefault(value, f"<id{len(seen)}>")
    if isinstance(value, str) and (ORIGIN.match(value) or "@" in value):
        return "<origin>"
    return value


def envelope(raw: RawMessage) -> dict[str, Any]:
    """The message as the fixtures' ``decoded`` (kombu's envelope, body decoded)."""
    data: dict[str, Any] = json.loads(dumps_envelope(raw, routing_key="celery"))
    data["body"] = json.loads(raw.body)
    return data


def from_fixture(decoded: dict[str, Any]) -> dict[str, Any]:
    return {**decoded, "body": decoded["body_decoded"]} | {"body_decoded": None, "body_text": None}


def same_shape(ours: list[RawMessage], theirs: list[dict[str, Any]]) -> None:
    mine, seen = [], {}  # one numbering across the messages, in order
    for raw in ours:
        mine.append(normalized(envelope(raw), seen))
    seen = {}
    expected = [normalized(from_fixture(d), seen) for d in theirs]
    for ours_one, theirs_one in zip(mine, expected, strict=True):
        theirs_one.pop("body_decoded")
        theirs_one.pop("body_text")
        assert ours_one == theirs_one


@pytest.fixture
def app() -> Iterator[Celeriac]:
    application = Celeriac("wire", broker="memory://canvas-wire", backend="memory://canvas-wire")

    @application.task(name="wireapp.add")
    def add(x: int, y: int) -> int:
        return x + y

    @application.task(name="wireapp.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @application.task(name="wireapp.tsum")
    def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    application.transport.purge("celery")
    yield application
    application.transport.purge("celery")
    application.close()


def sent(app: Celeriac, count: int) -> list[Delivery]:
    deliveries = app.transport.fetch(["celery"], count, 1.0)
    assert len(deliveries) == count
    return deliveries


def test_chain_message(app: Celeriac, shared_dir: Path) -> None:
    add, mul = app.tasks["wireapp.add"], app.tasks["wireapp.mul"]
    chain(add.s(1, 2), add.s(3), mul.s(2)).delay()
    (delivery,) = sent(app, 1)
    same_shape([delivery.message], [fixture(shared_dir, "redis-task-chain.json")["decoded"]])


def test_group_messages(app: Celeriac, shared_dir: Path) -> None:
    add = app.tasks["wireapp.add"]
    group(add.s(i, i) for i in range(3)).delay()
    messages = [d.message for d in sent(app, 3)]
    theirs = [m["decoded"] for m in fixture(shared_dir, "redis-task-group.json")["messages"]]
    same_shape(messages, theirs)


def test_chord_messages_and_size(app: Celeriac, shared_dir: Path) -> None:
    add, tsum = app.tasks["wireapp.add"], app.tasks["wireapp.tsum"]
    chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
    messages = [d.message for d in sent(app, 2)]
    captured = fixture(shared_dir, "redis-task-chord.json")
    same_shape(messages, [m["decoded"] for m in captured["messages"]])
    group_id = messages[0].headers["group"]
    size = app.backend.store.get(f"celery-taskset-meta-{group_id}.s")  # type: ignore[union-attr]
    ((_, key_after),) = captured["keys_after_send"].items()
    assert size == key_after["value"].encode()


def run_step(app: Celeriac, delivery: Delivery, value: Any) -> list[RawMessage]:
    """What the worker publishes when the task of ``delivery`` returns ``value``."""
    published: list[RawMessage] = []

    class Sink:
        def publish(self, queue: str, message: RawMessage, eta: float | None) -> None:
            published.append(message)

        def store(self, meta: Any) -> None: ...

        def ack(self, delivery: Delivery) -> None: ...

        def join(self, part: Any) -> None: ...

    request = RequestReader(app.tasks, hostname="w@host").read(delivery)
    assert isinstance(request, Request)
    execution = Execution(app, Sink(), WorkerState(), hostname="w@host")  # type: ignore[arg-type]
    asyncio.run(execution.outcome(request, Succeeded(value, 0.001)))
    return published


def test_chain_steps_published_by_the_worker(app: Celeriac, shared_dir: Path) -> None:
    add, mul = app.tasks["wireapp.add"], app.tasks["wireapp.mul"]
    chain(add.s(1, 2), add.s(3), mul.s(2)).delay()
    (first,) = sent(app, 1)
    (second,) = run_step(app, first, 3)
    (third,) = run_step(app, Delivery("t2", "celery", second), 6)
    captured = [
        m["decoded"] for m in fixture(shared_dir, "redis-task-chain-steps.json")["messages"]
    ]
    same_shape([first.message, second, third], captured)


def test_chord_callback_published_by_the_worker(app: Celeriac, shared_dir: Path) -> None:
    add, tsum = app.tasks["wireapp.add"], app.tasks["wireapp.tsum"]
    chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
    first, last = (decode(d.message) for d in sent(app, 2))
    entries = [(first.id, states.SUCCESS, 2), (last.id, states.SUCCESS, 4)]
    assert last.chord is not None and last.group is not None
    part = ChordPart(app, last.group, last.id, 1, states.SUCCESS, 4, dict(last.chord), last)
    (publication,) = _completion(part, entries).follow_ups.publications
    callback = app.encode(publication.message)
    captured = fixture(shared_dir, "result-chord-join.json")["callback_message"]["decoded"]
    ours = normalized(envelope(callback), {last.id: "<last>", last.group: "<group>"})
    theirs = normalized(
        from_fixture(captured),
        {
            "f8365e15-b607-4574-afe4-3b9423781eb6": "<last>",
            "691ebb92-30a9-4d08-b274-fbb5d1226fbe": "<group>",
        },
    )
    theirs.pop("body_decoded")
    theirs.pop("body_text")
    assert ours == theirs
