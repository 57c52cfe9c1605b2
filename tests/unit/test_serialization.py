"""Unit tests for ``celeriac.protocol.serialization``: kombu's serializers, tags and compression."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from celeriac.exceptions import ContentDisallowed, DecodeError, EncodeError, ImproperlyConfigured
from celeriac.protocol import serialization as s

UTC = timezone.utc


def json_text(obj: Any) -> str:
    content_type, encoding, payload = s.dumps(obj)
    assert (content_type, encoding) == ("application/json", "utf-8")
    return payload.decode("ascii")


def round_trip(obj: Any, serializer: str = "json", accept: list[str] | None = None) -> Any:
    content_type, encoding, payload = s.dumps(obj, serializer)
    return s.loads(payload, content_type, encoding, accept=accept)


class Reduced:
    def __json__(self) -> dict[str, int]:
        return {"reduced": 1}


# -- json ------------------------------------------------------------------------------------


def test_json_is_written_like_python_json_dumps() -> None:
    value = {"a": (1, 2), "b": [None, True, 1.5], "c": "caf\u00e9 \u2603", "d": 2**70}
    assert json_text(value) == (
        '{"a": [1, 2], "b": [null, true, 1.5], "c": "caf\\u00e9 \\u2603", '
        '"d": 1180591620717411303424}'
    )


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (
            datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            {"__type__": "datetime", "__value__": "2024-05-06T07:08:09.123456+00:00"},
        ),
        (
            datetime(2024, 5, 6, 7, 8, 9),
            {"__type__": "datetime", "__value__": "2024-05-06T07:08:09"},
        ),
        (date(2024, 5, 6), {"__type__": "date", "__value__": "2024-05-06"}),
        (time(7, 8, 9, 10), {"__type__": "time", "__value__": "07:08:09.000010"}),
        (b"bytes", {"__type__": "bytes", "__value__": "bytes"}),
        (b"\xff\x00\x01", {"__type__": "base64", "__value__": "/wAB"}),
        (Decimal("1.10"), {"__type__": "decimal", "__value__": "1.10"}),
        (
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}},
        ),
    ],
)
def test_kombu_type_tags(value: Any, tag: dict[str, Any]) -> None:
    assert s.json_loads(json_text([value])) == [value]
    assert json_text(value) == json_text(tag)
    decoded = s.json_loads(json_text(tag))
    assert decoded == value and type(decoded) is type(value)


def test_datetime_keeps_its_offset() -> None:
    value = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert round_trip(value).utcoffset() == timedelta(hours=2)


def test_objects_with_dunder_json_are_encoded_by_it() -> None:
    assert json_text({"x": Reduced()}) == '{"x": {"reduced": 1}}'


def test_only_exactly_two_key_tags_are_decoded() -> None:
    three = '{"__type__": "date", "__value__": "2024-05-06", "other": 1}'
    assert s.json_loads(three) == {"__type__": "date", "__value__": "2024-05-06", "other": 1}
    assert s.json_loads('{"__type__": "date"}') == {"__type__": "date"}


def test_escaped_tag_keys_are_still_tags() -> None:
    text = '{"\\u005f_type__": "decimal", "__value__": "2.5"}'
    assert s.json_loads(text) == Decimal("2.5")


def test_unknown_type_tag_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        s.json_loads('{"__type__": "pickle", "__value__": "x"}')
    assert info.value.field == "__type__" and "pickle" in str(info.value)


def test_bad_tag_value_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        s.json_loads('{"__type__": "datetime", "__value__": "yesterday"}')
    assert info.value.field == "datetime"


def test_invalid_json_is_a_decode_error_naming_the_body() -> None:
    with pytest.raises(DecodeError) as info:
        s.loads(b"[1, 2", "application/json", "utf-8")
    assert info.value.field == "body"
    with pytest.raises(DecodeError):
        s.loads(b'"\xff"', "application/json", "utf-8")


def test_unencodable_values_raise_encode_error_naming_the_type() -> None:
    with pytest.raises(EncodeError, match="set"):
        s.dumps({1, 2})
    with pytest.raises(EncodeError, match="object"):
        s.dumps([object()])
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError):
        s.dumps(loop)


def test_unknown_serializer_is_improperly_configured() -> None:
    with pytest.raises(ImproperlyConfigured, match="bson"):
        s.dumps(1, "bson")


def test_empty_payload_is_returned_as_is() -> None:
    assert s.loads(b"", "application/json", "utf-8") == b""


def test_str_payload_is_accepted() -> None:
    assert s.loads('{"a": 1}', "application/json", "utf-8") == {"a": 1}


# -- other serializers and accept ------------------------------------------------------------


def test_msgpack_round_trip() -> None:
    content_type, encoding, payload = s.dumps([1, "two", b"\x00", (3, 4)], "msgpack")
    assert (content_type, encoding) == ("application/x-msgpack", "binary")
    assert s.loads(payload, content_type, encoding, accept=["msgpack"]) == [
        1,
        "two",
        b"\x00",
        [3, 4],
    ]


def test_yaml_round_trip() -> None:
    content_type, encoding, payload = s.dumps({"a": [1, 2]}, "yaml")
    assert (content_type, encoding) == ("application/x-yaml", "utf-8")
    assert s.loads(payload, content_type, encoding, accept=["yaml"]) == {"a": [1, 2]}


def test_serializer_can_be_named_by_content_type() -> None:
    assert s.dumps(1, "application/json") == s.dumps(1, "json")


def test_pickle_is_refused_unless_accepted() -> None:
    content_type, encoding, payload = s.dumps({"a": 1}, "pickle")
    assert (content_type, encoding) == ("application/x-python-serialize", "binary")
    for accept in (None, ["json"], ["json", "msgpack"]):
        with pytest.raises(ContentDisallowed) as info:
            s.loads(payload, content_type, encoding, accept=accept)
        assert "application/x-python-serialize" in str(info.value)
        assert "application/json" in str(info.value)  # the accepted list is named
        assert info.value.field == "content_type"
    assert s.loads(payload, content_type, encoding, accept=["pickle"]) == {"a": 1}
    assert s.loads(payload, content_type, encoding, accept=[content_type]) == {"a": 1}


def test_accept_none_takes_everything_but_pickle() -> None:
    for name in ("json", "msgpack", "yaml"):
        assert round_trip([1], name) == [1]


def test_accept_limits_json_too() -> None:
    with pytest.raises(ContentDisallowed, match="json"):
        round_trip([1], "json", accept=["msgpack"])


def test_content_types_maps_names_and_keeps_types() -> None:
    assert s.content_types(["json", "application/x-msgpack"]) == frozenset(
        {"application/json", "application/x-msgpack"}
    )
    with pytest.raises(ImproperlyConfigured, match="jsn"):
        s.content_types(["jsn"])


def test_raw_content_is_trusted() -> None:
    assert s.loads(b"\x00\x01", "application/data", "binary", accept=["json"]) == b"\x00\x01"
    assert s.loads(b"caf\xc3\xa9", "application/text", "utf-8", accept=["json"]) == "caf\u00e9"
    assert s.loads(b"raw", None, None, accept=["json"]) == "raw"


def test_unknown_content_type_is_refused() -> None:
    with pytest.raises(ContentDisallowed, match="text/x-custom"):
        s.loads(b"x", "text/x-custom", "utf-8")


def test_missing_msgpack_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImproperlyConfigured, match=r"celeriac\[msgpack\]"):
        s.dumps([1], "msgpack")
    with pytest.raises(ImproperlyConfigured, match=r"celeriac\[msgpack\]"):
        s.loads(b"\x91\x01", "application/x-msgpack", "binary")


def test_corrupt_msgpack_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        s.loads(b"\xc1", "application/x-msgpack", "binary")


def test_importing_the_module_loads_no_optional_package() -> None:
    code = (
        "import sys, celeriac.protocol.serialization, celeriac.protocol.message, "
        "celeriac.protocol.result_meta\n"
        "heavy = {'msgpack', 'yaml', 'bz2', 'lzma', 'orjson'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- compression -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "header"),
    [
        ("zlib", "application/x-gzip"),
        ("gzip", "application/x-gzip"),
        ("bzip2", "application/x-bz2"),
        ("lzma", "application/x-lzma"),
        ("application/x-bz2", "application/x-bz2"),
    ],
)
def test_compression_uses_kombus_header_values(method: str, header: str) -> None:
    data = b"hello " * 100
    got_header, packed = s.compress(data, method)
    assert got_header == header and packed != data
    assert s.decompress(packed, got_header) == data


def test_gzip_header_means_zlib_data_like_kombu() -> None:
    import zlib

    _, packed = s.compress(b"payload", "gzip")
    assert zlib.decompress(packed) == b"payload"
    assert s.decompress(gzip.compress(b"real gzip"), "application/x-gzip") == b"real gzip"


def test_unknown_compression() -> None:
    with pytest.raises(ImproperlyConfigured, match="snappy"):
        s.compress(b"x", "snappy")
    with pytest.raises(DecodeError) as info:
        s.decompress(b"x", "application/x-snappy")
    assert info.value.field == "compression"


def test_corrupt_compressed_data_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        s.decompress(b"not compressed", "application/x-gzip")
    assert info.value.field == "compression"


# -- orjson, where installed -------------------------------------------------------------------
ORJSON_CORPUS = [
    b'{"a": 1, "a": 2}',
    b"1e400",
    b"[NaN, Infinity, -Infinity]",
    b"123456789012345678901234567890",
    b"-9223372036854775809",
    b"9223372036854775808",
    b"18446744073709551616",
    b'"\\ud800"',
    b'"\\ud83d\\ude00"',
    b'"\\u0041"',
    b"[-0.0, 0.1, 1.0000000000000002, 2.5e+3, 1E-5]",
    b'"\xff"',
    b"\xef\xbb\xbf[1]",
    b"[1,]",
    b"",
    b'[[4, 4], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
    b"[" * 2000 + b"]" * 2000,
]


def _verdict(call: Any, data: Any) -> tuple[str, str]:
    try:
        return ("ok", repr(call(data)))
    except Exception as exc:
        return ("error", type(exc).__name__)


@pytest.mark.parametrize("data", ORJSON_CORPUS, ids=range(len(ORJSON_CORPUS)))
def test_json_loads_is_the_same_with_and_without_orjson(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("orjson")
    text = data.decode("utf-8", "replace")
    monkeypatch.setattr(s, "_ORJSON", None)  # looked up again: orjson
    with_orjson = [_verdict(s.json_loads, data), _verdict(s.json_loads, text)]
    assert s._ORJSON is not None and s._ORJSON[0] is not None
    monkeypatch.setattr(s, "_ORJSON", (None, None))  # Python's parser only
    assert [_verdict(s.json_loads, data), _verdict(s.json_loads, text)] == with_orjson


def test_json_loads_numbers_match_python_with_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("orjson")
    rng = random.Random(5)
    values: list[Any] = [rng.uniform(-1e300, 1e300) for _ in range(300)]
    values += [rng.random() * 10 ** rng.randint(-300, 300) for _ in range(300)]
    values += [rng.randint(-(2**70), 2**70) for _ in range(300)]
    values += [rng.randint(-(2**63) - 5, 2**64 + 5) for _ in range(300)]
    values += [2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**18, 10**19]
    text = json.dumps(values).encode()
    monkeypatch.setattr(s, "_ORJSON", None)
    fast = s.json_loads(text)
    monkeypatch.setattr(s, "_ORJSON", (None, None))
    slow = s.json_loads(text)
    assert fast == slow == values
    assert [type(v) for v in fast] == [type(v) for v in values]
    for value in values:  # one at a time too: a lone number is a whole document
        one = json.dumps(value).encode()
        monkeypatch.setattr(s, "_ORJSON", None)
        got = s.json_loads(one)
        assert got == value and type(got) is type(value), one
