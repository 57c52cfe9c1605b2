"""Golden tests: task messages on the Redis broker, against real Celery captures (5.7 and 5.3).

For every captured task message:

* ``loads_envelope`` + ``decode`` give the captured headers, properties and body, and
  ``dumps_envelope(encode(decode(...)))`` gives back the captured bytes exactly;
* ``encode`` of the same call (a ``TaskMessage`` built from the fixture's ``call``, with the
  capture's random ids, origin and reply_to copied in) gives the captured headers (key order
  too), properties and body bytes. Times that Celery derived from "now" are rebuilt from the
  captured value minus the countdown, so they compare exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from golden_support import VERSIONS, load, parse_time, sig

from celeriac.exceptions import DecodeError
from celeriac.protocol.envelope import RawMessage, dumps_envelope, loads_envelope
from celeriac.protocol.message import TaskMessage, decode, encode

UTC = timezone.utc
Entry = dict[str, Any]
Built = list[tuple[TaskMessage, datetime | None]]

SINGLE = [
    "redis-task-add.json",
    "redis-task-countdown.json",
    "redis-task-eta.json",
    "redis-task-expires.json",
    "redis-task-expires-datetime.json",
    "redis-task-queue-other.json",
    "redis-task-retries.json",
    "redis-task-link.json",
    "redis-task-options-all.json",
    "redis-task-chain.json",
    "redis-task-kwargs-types.json",
    "redis-task-add-protocol1.json",
]
MULTI = [
    "redis-task-group.json",
    "redis-task-chord.json",
    "redis-task-chord-unlock.json",
    "redis-task-chain-steps.json",
    "redis-task-link-executed.json",
]
OTHER = ["redis-task-priority.json", "redis-task-retry.json"]
ALL_FILES = SINGLE + MULTI + OTHER


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def entries(version: str, name: str) -> list[Entry]:
    """The captured task messages of a fixture file, in the order they were sent."""
    data = load(version, name)
    if "messages" in data:
        return list(data["messages"])
    if name == "redis-task-retry.json":
        return [data["original"], data["retry_message"]]
    if name == "redis-task-priority.json":
        return [data["example_priority_5"]]
    return [data]


def captured_ids(entry: Entry) -> dict[str, Any]:
    """The random parts of a captured message, to copy into the rebuilt call."""
    headers = entry["decoded"]["headers"]
    found: dict[str, Any] = {
        "id": headers["id"],
        "origin": headers["origin"],
        "reply_to": entry["decoded"]["properties"]["reply_to"],
    }
    if headers["root_id"] != headers["id"]:  # else left to encode's default (root = id)
        found["root_id"] = headers["root_id"]
    for key in ("parent_id", "group"):
        if headers[key] is not None:
            found[key] = headers[key]
    return found


def chain_options(entry: Entry, index: int) -> dict[str, Any]:
    return dict(entry["decoded"]["body_decoded"][2]["chain"][index]["options"])


def chord_options(entry: Entry) -> dict[str, Any]:
    return dict(entry["decoded"]["body_decoded"][2]["chord"]["options"])


def eta_now(entry: Entry, countdown: float) -> datetime:
    """The "now" Celery used: captured eta minus the countdown."""
    return parse_time(entry["decoded"]["headers"]["eta"]) - timedelta(seconds=countdown)


def add(entry: Entry, *args: Any, **options: Any) -> TaskMessage:
    return TaskMessage(task="wireapp.add", args=args, **captured_ids(entry), **options)


# -- the calls, rebuilt ----------------------------------------------------------------------


def build_simple(name: str, e: Entry) -> Built:
    if name in ("redis-task-add.json", "redis-task-queue-other.json"):
        return [(add(e, 2, 3), None)]
    if name == "redis-task-countdown.json":
        now = eta_now(e, 10)
        return [(add(e, 2, 3, eta=now + timedelta(seconds=10)), now)]
    if name == "redis-task-eta.json":
        return [(add(e, 2, 3, eta=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)), None)]
    if name == "redis-task-expires.json":
        now = parse_time(e["decoded"]["headers"]["expires"]) - timedelta(seconds=60)
        return [(add(e, 2, 3, expires=now + timedelta(seconds=60)), now)]
    if name == "redis-task-expires-datetime.json":
        expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        left = int(e["decoded"]["properties"]["expiration"])
        return [(add(e, 2, 3, expires=expires), expires - timedelta(milliseconds=left))]
    if name == "redis-task-retries.json":
        return [(add(e, 2, 3, retries=3), None)]
    if name == "redis-task-link.json":
        links = {"callbacks": [sig("wireapp.add", 10)], "errbacks": [sig("wireapp.on_error")]}
        return [(add(e, 2, 3, **links), None)]
    if name == "redis-task-priority.json":
        return [(add(e, 5, 5, priority=5), None)]
    raise KeyError(name)


def build_options_all(e: Entry) -> Built:
    now = eta_now(e, 10)
    message = add(
        e,
        2,
        3,
        eta=now + timedelta(seconds=10),
        expires=now + timedelta(seconds=120),
        priority=7,
        retries=2,
        callbacks=[sig("wireapp.mul", 2)],
        errbacks=[sig("wireapp.on_error")],
        shadow="shadowed-name",
        timelimit=(30, 20),
        ignore_result=True,
        extra_headers={"x-custom": "v"},
    )
    return [(message, now)]


def build_kwargs_types(e: Entry) -> Built:
    kwargs = {
        "dt": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "naive": datetime(2024, 5, 6, 7, 8, 9),
        "d": date(2024, 5, 6),
        "t": time(7, 8, 9, 10),
        "b": b"bytes",
        "bb": b"\xff\x00\x01",
        "dec": Decimal("1.10"),
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "big": 2**70,
        "unicode": "caf\u00e9 \u2603",
    }
    args = (1, "two", 3.5, None, True, [1, 2], (3, 4), {"k": "v"})
    message = TaskMessage(task="wireapp.echo", args=args, kwargs=kwargs, **captured_ids(e))
    return [(message, None)]


def build_chain(es: list[Entry]) -> Built:
    e = es[0]
    chain = [
        sig("wireapp.mul", 2, options=chain_options(e, 0)),
        sig("wireapp.add", 3, options=chain_options(e, 1)),
    ]
    return [(add(e, 1, 2, chain=chain), None)]


def build_chain_steps(es: list[Entry]) -> Built:
    first, second, third = es
    mul = sig("wireapp.mul", 2, options=chain_options(first, 0))
    step3 = TaskMessage(task="wireapp.mul", args=(6, 2), chain=[], **captured_ids(third))
    return [
        *build_chain([first]),
        (add(second, 3, 3, chain=[mul]), None),
        (step3, None),
    ]


def build_group(es: list[Entry]) -> Built:
    return [(add(e, i, i, group_index=i), None) for i, e in enumerate(es)]


def build_chord_header(es: list[Entry]) -> Built:
    return [
        (
            add(
                e, i + 1, i + 1, group_index=i, chord=sig("wireapp.tsum", options=chord_options(e))
            ),
            None,
        )
        for i, e in enumerate(es)
    ]


def build_chord_unlock(es: list[Entry], version: str) -> Built:
    unlock, *header = es
    body_args, body_kwargs, _ = unlock["decoded"]["body_decoded"]
    group_id = body_args[0]
    kwargs: dict[str, Any] = {
        "interval": None,
        "max_retries": None,
        "result": [((h["decoded"]["headers"]["id"], None), None) for h in header],
    }
    if version == "5.7.0":
        kwargs["_chord_unlock_exchange_type"] = "direct"
    body = sig("wireapp.tsum", options=body_args[1]["options"])
    now = eta_now(unlock, 1)
    message = TaskMessage(
        task="celery.chord_unlock",
        args=(group_id, body),
        kwargs=kwargs,
        eta=now + timedelta(seconds=1),
        ignore_result=True,
        **captured_ids(unlock),
    )
    assert body_kwargs.keys() == kwargs.keys()
    return [(message, now), *build_chord_header(header)]


def build_retry(es: list[Entry]) -> Built:
    original, retry = es
    now = eta_now(retry, 1)
    again = TaskMessage(
        task="wireapp.retry_once",
        args=(7,),
        retries=1,
        eta=now + timedelta(seconds=1),
        extra_properties={"origin": retry["decoded"]["headers"]["origin"]},
        **captured_ids(retry),
    )
    first = TaskMessage(task="wireapp.retry_once", args=(7,), **captured_ids(original))
    return [(first, None), (again, now)]


def build_link_executed(es: list[Entry]) -> Built:
    parent, callback, failing = es
    fail = TaskMessage(
        task="wireapp.fail", errbacks=[sig("wireapp.on_error")], **captured_ids(failing)
    )
    return [
        (add(parent, 2, 3, callbacks=[sig("wireapp.add", 10)]), None),
        (add(callback, 5, 10), None),
        (fail, None),
    ]


BUILDERS: dict[str, Callable[[list[Entry], str], Built]] = {
    "redis-task-options-all.json": lambda es, v: build_options_all(es[0]),
    "redis-task-kwargs-types.json": lambda es, v: build_kwargs_types(es[0]),
    "redis-task-chain.json": lambda es, v: build_chain(es),
    "redis-task-chain-steps.json": lambda es, v: build_chain_steps(es),
    "redis-task-group.json": lambda es, v: build_group(es),
    "redis-task-chord.json": lambda es, v: build_chord_header(es),
    "redis-task-chord-unlock.json": build_chord_unlock,
    "redis-task-retry.json": lambda es, v: build_retry(es),
    "redis-task-link-executed.json": lambda es, v: build_link_executed(es),
    "redis-task-add-protocol1.json": lambda es, v: [],  # protocol 1 is read-only
}


def build(name: str, version: str) -> Built:
    es = entries(version, name)
    if name in BUILDERS:
        return BUILDERS[name](es, version)
    return build_simple(name, es[0])


# -- comparisons -----------------------------------------------------------------------------

KOMBU_PROPERTIES = ("delivery_info", "body_encoding", "delivery_tag")


def assert_same_as_captured(raw: RawMessage, entry: Entry) -> None:
    decoded = entry["decoded"]
    assert raw.content_type == decoded["content-type"]
    assert raw.content_encoding == decoded["content-encoding"]
    assert list(raw.headers.items()) == list(decoded["headers"].items())
    captured = {k: v for k, v in decoded["properties"].items() if k not in KOMBU_PROPERTIES}
    assert list(raw.properties.items()) == list(captured.items())
    assert raw.body == decoded["body_text"].encode("utf-8")


@pytest.mark.parametrize("name", ALL_FILES)
def test_encode_of_the_call_matches_capture(version: str, name: str) -> None:
    captured = entries(version, name)
    built = build(name, version)
    if name == "redis-task-add-protocol1.json":
        assert built == []
        return
    assert len(built) == len(captured)
    for (message, now), entry in zip(built, captured, strict=True):
        assert_same_as_captured(encode(message, now=now), entry)


def expiration_now(entry: Entry) -> datetime | None:
    """The "now" that reproduces the captured ``expiration`` from the captured ``expires``."""
    expiration = entry["decoded"]["properties"].get("expiration")
    if expiration is None:
        return None
    expires = parse_time(entry["decoded"]["headers"]["expires"])
    return expires - timedelta(milliseconds=int(expiration))


@pytest.mark.parametrize("name", ALL_FILES)
def test_decode_then_encode_gives_the_captured_bytes(version: str, name: str) -> None:
    for entry in entries(version, name):
        envelope = loads_envelope(entry["raw"])
        message = decode(envelope.message, accept=["json"])
        if message.protocol_version == 1:
            continue  # Celeriac reads protocol 1 but always writes protocol 2
        again = encode(message, now=expiration_now(entry))
        data = dumps_envelope(
            again,
            routing_key=envelope.routing_key,
            exchange=envelope.exchange,
            delivery_tag=envelope.delivery_tag,
        )
        assert data == entry["raw"].encode("utf-8")


def assert_decoded_fields(message: TaskMessage, entry: Entry) -> None:
    headers = entry["decoded"]["headers"]
    args, kwargs, embed = entry["decoded"]["body_decoded"]
    assert (message.id, message.task) == (headers["id"], headers["task"])
    assert list(message.args) == args
    assert message.kwargs.keys() == kwargs.keys()
    assert message.callbacks == embed["callbacks"] and message.errbacks == embed["errbacks"]
    assert message.chain == embed["chain"] and message.chord == embed["chord"]
    for key in ("eta", "expires"):
        value = getattr(message, key)
        assert (value and value.isoformat()) == headers[key]
    assert list(message.timelimit) == headers["timelimit"]
    simple = ["lang", "shadow", "group", "group_index", "retries", "root_id", "parent_id"]
    simple += ["argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting"]
    for key in (*simple, "stamped_headers", "stamps"):
        assert getattr(message, key) == headers[key], key
    properties = entry["decoded"]["properties"]
    assert message.reply_to == properties["reply_to"]
    assert message.priority == properties["priority"]
    assert message.delivery_mode == properties["delivery_mode"]
    assert (message.serializer, message.compression) == ("json", None)


@pytest.mark.parametrize("name", [n for n in ALL_FILES if "protocol1" not in n])
def test_decode_gives_the_captured_fields(version: str, name: str) -> None:
    for entry in entries(version, name):
        envelope = loads_envelope(entry["raw"])
        assert envelope.routing_key == envelope.message.properties["delivery_info"]["routing_key"]
        assert envelope.delivery_tag == entry["decoded"]["properties"]["delivery_tag"]
        message = decode(envelope.message, accept=["application/json"])
        assert message.protocol_version == 2
        assert_decoded_fields(message, entry)


def test_queue_other_is_routed_to_other(version: str) -> None:
    (entry,) = entries(version, "redis-task-queue-other.json")
    assert entry["redis_key"] == "other"
    assert loads_envelope(entry["raw"]).routing_key == "other"


def test_options_all_merges_custom_headers_at_the_top(version: str) -> None:
    (entry,) = entries(version, "redis-task-options-all.json")
    message = decode(loads_envelope(entry["raw"]).message)
    assert message.extra_headers == {"x-custom": "v"}
    assert (message.shadow, message.timelimit, message.ignore_result) == (
        "shadowed-name",
        (30, 20),
        True,
    )
    assert message.expires is not None and message.eta is not None
    assert message.expires - message.eta == timedelta(seconds=110)
    assert encode(message, now=message.eta - timedelta(seconds=10)).properties["expiration"] == (
        "120000"
    )


def test_eta_keeps_microseconds_and_offset(version: str) -> None:
    (entry,) = entries(version, "redis-task-eta.json")
    assert entry["decoded"]["headers"]["eta"] == "2030-01-02T03:04:05.678901+00:00"
    message = decode(loads_envelope(entry["raw"]).message)
    assert message.eta == datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_kwargs_types_decode_to_python_values(version: str) -> None:
    (entry,) = entries(version, "redis-task-kwargs-types.json")
    message = decode(loads_envelope(entry["raw"]).message)
    ((expected, _),) = build_kwargs_types(entry)
    assert message.kwargs == expected.kwargs
    assert message.args == (1, "two", 3.5, None, True, [1, 2], [3, 4], {"k": "v"})
    assert message.kwargs["dt"].tzinfo is not None and message.kwargs["naive"].tzinfo is None


def test_chain_holds_the_rest_in_reverse_order(version: str) -> None:
    (entry,) = entries(version, "redis-task-chain.json")
    message = decode(loads_envelope(entry["raw"]).message)
    assert message.chain is not None
    assert [step["task"] for step in message.chain] == ["wireapp.mul", "wireapp.add"]


def test_chain_steps_end_with_an_empty_chain(version: str) -> None:
    messages = [
        decode(loads_envelope(e["raw"]).message)
        for e in entries(version, "redis-task-chain-steps.json")
    ]
    assert [len(m.chain or ()) for m in messages] == [2, 1, 0]
    assert messages[-1].chain == []
    assert {m.root_id for m in messages} == {messages[0].id}
    assert [m.parent_id for m in messages] == [None, messages[0].id, messages[1].id]


def test_group_members_carry_group_and_index(version: str) -> None:
    messages = [
        decode(loads_envelope(e["raw"]).message) for e in entries(version, "redis-task-group.json")
    ]
    assert [m.group_index for m in messages] == [0, 1, 2]
    assert len({m.group for m in messages}) == 1 and messages[0].group


def test_chord_header_embeds_the_body(version: str) -> None:
    for entry in entries(version, "redis-task-chord.json"):
        message = decode(loads_envelope(entry["raw"]).message)
        assert message.chord is not None and message.chord["task"] == "wireapp.tsum"
        assert message.group is not None
        group_in_body = message.chord["options"].get("group_id")
        assert group_in_body == (message.group if version == "5.7.0" else None)


def test_chord_unlock_is_a_countdown_task(version: str) -> None:
    unlock = decode(
        loads_envelope(entries(version, "redis-task-chord-unlock.json")[0]["raw"]).message
    )
    assert unlock.task == "celery.chord_unlock" and unlock.eta is not None
    assert unlock.args[1]["task"] == "wireapp.tsum"


def test_retry_keeps_the_id_and_points_to_itself(version: str) -> None:
    original, retry = (
        decode(loads_envelope(e["raw"]).message) for e in entries(version, "redis-task-retry.json")
    )
    assert retry.id == original.id == retry.parent_id == retry.root_id
    assert (original.retries, retry.retries) == (0, 1)
    assert retry.eta is not None and original.eta is None
    assert retry.extra_properties == {"origin": "gen1@example-host"}


def test_link_callback_gets_the_parent_result_first(version: str) -> None:
    parent, callback, failing = (
        decode(loads_envelope(e["raw"]).message)
        for e in entries(version, "redis-task-link-executed.json")
    )
    assert callback.args == (5, 10) and callback.parent_id == parent.id
    assert failing.errbacks == [sig("wireapp.on_error") | {"args": []}]


def test_priority_property_is_kept_exactly(version: str) -> None:
    data = load(version, "redis-task-priority.json")
    for row in data["by_priority"]:
        p = row["priority"]
        assert (
            encode(TaskMessage(id="x", task="t", priority=p)).priority == row["properties_priority"]
        )
    example = data["example_priority_5"]
    assert example["redis_key"] == "celery\x06\x163"
    assert decode(loads_envelope(example["raw"]).message).priority == 5


def test_protocol1_is_read(version: str) -> None:
    (entry,) = entries(version, "redis-task-add-protocol1.json")
    envelope = loads_envelope(entry["raw"])
    assert envelope.message.headers == {}
    message = decode(envelope.message, accept=["json"])
    body = entry["decoded"]["body_decoded"]
    assert message.protocol_version == 1
    assert (message.id, message.task, message.args, message.kwargs) == (
        body["id"],
        "wireapp.add",
        (2, 3),
        {},
    )
    assert message.timelimit == (None, None) and message.retries == 0
    assert message.eta is None and message.group is None and message.chain is None
    assert message.reply_to == entry["decoded"]["properties"]["reply_to"]
    again = decode(encode(message))  # re-sent as protocol 2
    assert again.protocol_version == 2 and again.args == (2, 3) and again.id == message.id


def test_a_two_item_body_is_refused(version: str) -> None:
    (entry,) = entries(version, "redis-task-add.json")
    raw = loads_envelope(entry["raw"]).message
    bad = RawMessage(b"[[2, 3], {}]", raw.content_type, raw.content_encoding, raw.headers)
    with pytest.raises(DecodeError) as info:
        decode(bad)
    assert info.value.field == "body"
