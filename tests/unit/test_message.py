"""Unit tests for ``celeriac.protocol.message`` (and the kombu envelope it travels in)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celeriac.exceptions import ContentDisallowed, DecodeError
from celeriac.protocol.envelope import (
    RawMessage,
    dumps_envelope,
    dumps_unacked,
    loads_envelope,
    loads_unacked,
    mark_redelivered,
)
from celeriac.protocol.message import (
    TaskMessage,
    decode,
    encode,
    expiration_ms,
    headers_for,
    saferepr,
)
from celeriac.protocol.serialization import dumps

UTC = timezone.utc
NOW = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
HEADER_ORDER = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
]


def message(**fields: Any) -> TaskMessage:
    return TaskMessage(**{"id": "tid", "task": "app.add", "args": (2, 3), **fields})


def raw_v2(body: Any, headers: dict[str, Any] | None = None, **props: Any) -> RawMessage:
    payload = json.dumps(body).encode()
    return RawMessage(
        payload, headers={"id": "tid", "task": "app.add", **(headers or {})}, properties=props
    )


# -- saferepr --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ((2, 3), "(2, 3)"),
        ((7,), "(7,)"),
        ({}, "{}"),
        ({"a": "it's"}, "{'a': 'it\\'s'}"),
        ((b"bytes", b"\xff\x00\x01"), "(b'bytes', b'ff0001')"),
        ((None, True, 1.5), "(None, True, 1.5)"),
        ((set(), frozenset({1})), "(set(), frozenset({1}))"),
        ([[[[1]]]], "[[[[...]]]]"),
        (([2, 4],), "([2, 4],)"),
    ],
)
def test_saferepr_matches_celery(value: Any, text: str) -> None:
    assert saferepr(value, 1024) == text


def test_saferepr_cuts_long_values() -> None:
    text = saferepr(tuple(range(1000)), 20)
    assert text == "(0, 1, 2, 3, 4, 5, 6..., ...)"  # as Celery 5.7 cuts it
    assert saferepr(("x" * 2000,), 1024) == "('" + "x" * 1023 + "...',)"


def test_saferepr_survives_recursion_and_bad_reprs() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert saferepr(loop).startswith("[1, <Recursion on list with id=")

    class Bad:
        def __repr__(self) -> str:
            raise ValueError("no")

    assert saferepr([Bad()]).startswith("[<Unrepresentable")


# -- encode ----------------------------------------------------------------------------------


def test_encode_writes_celerys_headers_in_order() -> None:
    raw = encode(message(origin="gen1@host", reply_to="oid"))
    assert list(raw.headers) == HEADER_ORDER
    assert raw.headers["root_id"] == "tid" and raw.headers["argsrepr"] == "(2, 3)"
    assert raw.headers["kwargsrepr"] == "{}" and raw.headers["timelimit"] == [None, None]
    assert raw.properties == {
        "correlation_id": "tid",
        "reply_to": "oid",
        "delivery_mode": 2,
        "priority": 0,
    }
    assert (
        raw.body
        == b'[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    )
    assert (raw.content_type, raw.content_encoding) == ("application/json", "utf-8")


def test_encode_without_reply_to_sends_empty_string_like_celery() -> None:
    assert encode(message()).properties["reply_to"] == ""


def test_extra_headers_merge_at_top_level_and_override() -> None:
    headers = headers_for(message(extra_headers={"x-custom": "v", "origin": "me"}))
    assert list(headers)[-1] == "x-custom" and headers["origin"] == "me"


def test_extra_properties_come_after_reply_to() -> None:
    raw = encode(message(extra_properties={"origin": "node"}))
    assert list(raw.properties) == [
        "correlation_id",
        "reply_to",
        "origin",
        "delivery_mode",
        "priority",
    ]


def test_times_are_written_as_utc_iso() -> None:
    plus2 = timezone(timedelta(hours=2))
    raw = encode(
        message(eta=datetime(2026, 1, 1, 14, tzinfo=plus2), expires=datetime(2026, 1, 2)), now=NOW
    )
    assert raw.headers["eta"] == "2026-01-01T12:00:00+00:00"
    assert raw.headers["expires"] == "2026-01-02T00:00:00+00:00"  # naive taken as UTC


def test_expiration_is_ms_until_expires_clamped_at_zero() -> None:
    assert expiration_ms(NOW + timedelta(seconds=60), NOW) == "60000"
    assert expiration_ms(NOW + timedelta(seconds=0.1234), NOW) == "123"
    assert expiration_ms(NOW - timedelta(seconds=5), NOW) == "0"
    raw = encode(message(expires=NOW + timedelta(seconds=120)), now=NOW)
    assert list(raw.properties) == [
        "correlation_id",
        "reply_to",
        "delivery_mode",
        "expiration",
        "priority",
    ]
    assert raw.properties["expiration"] == "120000"
    assert "expiration" not in encode(message()).properties


def test_compression_sets_the_header_and_decodes_back() -> None:
    raw = encode(message(compression="gzip"))
    assert raw.headers["compression"] == "application/x-gzip"
    assert not raw.body.startswith(b"[")
    again = decode(raw)
    assert again.compression == "gzip" and again.args == (2, 3)
    assert "compression" not in again.extra_headers


def test_other_serializers_round_trip() -> None:
    raw = encode(message(serializer="msgpack", kwargs={"b": b"\x00"}))
    assert (raw.content_type, raw.content_encoding) == ("application/x-msgpack", "binary")
    again = decode(raw, accept=["msgpack"])
    assert again.kwargs == {"b": b"\x00"} and again.serializer == "msgpack"
    with pytest.raises(ContentDisallowed):
        decode(raw, accept=["json"])


def test_encode_decode_round_trip_keeps_every_field() -> None:
    original = TaskMessage(
        id="tid",
        task="app.add",
        args=(1, [2]),
        kwargs={"k": "v"},
        callbacks=[{"task": "a"}],
        errbacks=[{"task": "b"}],
        chain=[{"task": "c"}],
        chord={"task": "d"},
        shadow="s",
        eta=NOW,
        expires=NOW + timedelta(hours=1),
        group="g",
        group_index=3,
        retries=2,
        timelimit=(30, 20.5),
        root_id="r",
        parent_id="p",
        argsrepr="(1, [2])",
        kwargsrepr="{'k': 'v'}",
        origin="o",
        ignore_result=True,
        replaced_task_nesting=1,
        stamped_headers=["x"],
        stamps={"x": 1},
        extra_headers={"custom": 1},
        reply_to="oid",
        priority=5,
        delivery_mode=1,
        extra_properties={"app_id": "me"},
    )
    again = decode(encode(original, now=NOW))
    assert again == TaskMessage(**{**_fields(original), "args": (1, [2])})


def _fields(msg: TaskMessage) -> dict[str, Any]:
    return {name: getattr(msg, name) for name in TaskMessage.__dataclass_fields__}


# -- decode ----------------------------------------------------------------------------------

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_minimal_message_gets_defaults() -> None:
    msg = decode(raw_v2([[1], {}, EMBED]))
    assert (msg.id, msg.task, msg.args, msg.retries, msg.priority) == ("tid", "app.add", (1,), 0, 0)
    assert msg.timelimit == (None, None) and msg.stamps == {} and msg.root_id is None
    assert msg.delivery_mode == 2 and msg.reply_to is None


def test_null_embed_is_accepted() -> None:
    assert decode(raw_v2([[], {}, None])).callbacks is None


def test_redelivered_header_is_ignored_and_unknown_ones_kept() -> None:
    msg = decode(raw_v2([[], {}, EMBED], {"redelivered": True, "x-trace": "t"}, custom=1))
    assert msg.extra_headers == {"x-trace": "t"}
    assert msg.extra_properties == {"custom": 1}


def test_naive_times_are_utc_like_celery_5() -> None:
    msg = decode(
        raw_v2([[], {}, EMBED], {"eta": "2026-01-02T03:04:05", "expires": "2026-01-02T03:04:05Z"})
    )
    assert msg.eta == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert msg.expires == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ([[], {}], {}, "body"),
        ([[], {}, {}, {}], {}, "body"),
        ({"args": []}, {}, "body"),
        (["x", {}, EMBED], {}, "args"),
        ([[], [], EMBED], {}, "kwargs"),
        ([[], {}, []], {}, "embed"),
        ([[], {}, {**EMBED, "chain": {}}], {}, "chain"),
        ([[], {}, EMBED], {"id": None}, "id"),
        ([[], {}, EMBED], {"id": 5}, "id"),
        ([[], {}, EMBED], {"eta": "soon"}, "eta"),
        ([[], {}, EMBED], {"expires": 12}, "expires"),
        ([[], {}, EMBED], {"timelimit": [1]}, "timelimit"),
        ([[], {}, EMBED], {"timelimit": ["a", None]}, "timelimit"),
        ([[], {}, EMBED], {"retries": "1"}, "retries"),
        ([[], {}, EMBED], {"group": 1}, "group"),
        ([[], {}, EMBED], {"stamps": []}, "stamps"),
        ([[], {}, EMBED], {"compression": "application/x-snappy"}, "compression"),
    ],
)
def test_bad_messages_name_the_field(body: Any, headers: dict[str, Any], field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(raw_v2(body, headers))
    assert info.value.field == field


def test_bad_priority_property_names_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        decode(raw_v2([[], {}, EMBED], priority="high"))
    assert info.value.field == "priority"


def test_undecodable_body_is_a_decode_error() -> None:
    raw = RawMessage(b"[[", headers={"id": "tid", "task": "t"})
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.field == "body"


def test_disallowed_content_type() -> None:
    _, _, payload = dumps([[], {}, EMBED], "pickle")
    raw = RawMessage(payload, "application/x-python-serialize", "binary", {"id": "i", "task": "t"})
    with pytest.raises(ContentDisallowed):
        decode(raw, accept=["json"])
    assert decode(raw, accept=["json", "pickle"]).task == "t"


def v1(**body: Any) -> RawMessage:
    return RawMessage(json.dumps({"task": "app.add", "id": "tid", **body}).encode())


def test_protocol_1_body() -> None:
    msg = decode(v1(args=[1], kwargs={"a": 2}, taskset="g", retries=2, timelimit=[5, None]))
    assert msg.protocol_version == 1
    assert (msg.args, msg.kwargs, msg.group, msg.retries) == ((1,), {"a": 2}, "g", 2)
    assert msg.timelimit == (5, None) and msg.root_id is None
    assert decode(v1()).args == () and decode(v1()).kwargs == {}


def test_protocol_1_local_time_flag() -> None:
    local = decode(v1(eta="2026-01-02T03:04:05", utc=False)).eta
    assert local == datetime(2026, 1, 2, 3, 4, 5).astimezone()
    assert decode(v1(eta="2026-01-02T03:04:05")).eta == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_protocol_1_errors() -> None:
    with pytest.raises(DecodeError) as info:
        decode(RawMessage(b"[[], {}, {}]"))  # no task header, not a v1 body
    assert info.value.field == "task"
    with pytest.raises(DecodeError) as info:
        decode(v1(kwargs=[1]))
    assert info.value.field == "kwargs"


# -- envelope --------------------------------------------------------------------------------


def test_envelope_layout_and_round_trip() -> None:
    raw = encode(message(reply_to="oid", expires=NOW), now=NOW)
    data = dumps_envelope(raw, routing_key="celery", delivery_tag="tag")
    envelope = json.loads(data)
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert list(envelope["properties"]) == [
        "correlation_id",
        "reply_to",
        "delivery_mode",
        "expiration",
        "delivery_info",
        "priority",
        "body_encoding",
        "delivery_tag",
    ]
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert base64.b64decode(envelope["body"]) == raw.body
    parsed = loads_envelope(data)
    assert (parsed.delivery_tag, parsed.exchange, parsed.routing_key) == ("tag", "", "celery")
    assert not parsed.redelivered and parsed.message.body == raw.body
    again = dumps_envelope(parsed.message, routing_key="celery", delivery_tag="tag")
    assert again == data


def test_fresh_delivery_tags_are_uuid4() -> None:
    data = json.loads(dumps_envelope(RawMessage(b"{}"), routing_key="q"))
    assert uuid.UUID(data["properties"]["delivery_tag"]).version == 4


def envelope_text(**changes: Any) -> str:
    props = {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "t"}
    data: dict[str, Any] = {"body": "e30=", "content-type": "application/json", "headers": {}}
    data["properties"] = {**props, "body_encoding": "base64"}
    for key, value in changes.items():
        if key.startswith("p_"):
            data["properties"][key[2:]] = value
        else:
            data[key] = value
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_body_encodings_kombu_accepts() -> None:
    assert loads_envelope(envelope_text()).message.body == b"{}"
    assert loads_envelope(envelope_text(body="{}", p_body_encoding="utf-8")).message.body == b"{}"
    plain = json.loads(envelope_text(body="[1]"))
    del plain["properties"]["body_encoding"]
    assert loads_envelope(json.dumps(plain)).message.body == b"[1]"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "envelope"),
        ("[1]", "envelope"),
        (envelope_text(properties=...), "properties"),
        (envelope_text(headers=[1]), "headers"),
        (envelope_text(body=5), "body"),
        (envelope_text(body="abc"), "body"),
        (envelope_text(p_body_encoding="rot13"), "properties.body_encoding"),
        (envelope_text(p_delivery_tag=None), "properties.delivery_tag"),
        (envelope_text(p_delivery_info="x"), "properties.delivery_info"),
        (envelope_text(**{"content-type": 1}), "content-type"),
    ],
)
def test_bad_envelopes_name_the_field(text: str, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        loads_envelope(text)
    assert info.value.field == field


def test_missing_content_type_means_raw_data_like_kombu() -> None:
    text = json.dumps({**json.loads(envelope_text()), "content-type": None})
    assert loads_envelope(text).message.content_type == "application/data"


def test_mark_redelivered_and_unacked_entries() -> None:
    data = dumps_envelope(encode(message()), routing_key="celery", delivery_tag="tag")
    restored = mark_redelivered(data)
    parsed = loads_envelope(restored)
    assert parsed.redelivered and parsed.message.headers["redelivered"] is True
    assert json.loads(restored)["properties"]["delivery_info"]["redelivered"] is True
    entry = dumps_unacked(data, "", "celery")
    assert json.loads(entry)[1:] == ["", "celery"]
    assert loads_unacked(entry) == (data, "", "celery")
    with pytest.raises(DecodeError) as info:
        loads_unacked("[1, 2]")
    assert info.value.field == "unacked"


def test_saferepr_flat_fast_path_writes_what_the_streaming_repr_writes() -> None:
    import random

    from celeriac.protocol.message import _stream_repr, saferepr

    rng = random.Random(8)

    def value() -> Any:
        text = "".join(chr(rng.randrange(32, 400)) for _ in range(rng.randrange(0, 40)))
        return rng.choice([rng.randrange(-(10**9), 10**9), rng.random(), None, True, text])

    cases: list[Any] = [(), (1,), ["it's", 'say "x"'], ("a\nb", "\\"), {"k": 1, 2: None}]
    cases += [("x" * n,) for n in range(1016, 1026)]
    for _ in range(3000):
        items = [value() for _ in range(rng.randrange(0, 6))]
        cases += [tuple(items), items, {str(i): v for i, v in enumerate(items)}]
    for case in cases:
        for maxlen in (None, 1024, 12, 0):
            assert saferepr(case, maxlen) == _stream_repr(case, maxlen, 3), (case, maxlen)
