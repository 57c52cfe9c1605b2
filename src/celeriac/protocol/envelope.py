"""``RawMessage`` — a message as a transport carries it — and kombu's Redis envelope.

A ``RawMessage`` is the AMQP-shaped triple Celery uses on every broker: ``headers`` (task metadata
in protocol v2), ``properties`` (``correlation_id``, ``reply_to``, ``delivery_mode``, ``priority``,
``expiration``, ...), and ``body`` (serialised, possibly compressed, bytes) with its
``content_type`` / ``content_encoding``.

kombu's Redis transport folds these into one JSON text (spec §3.1)::

    {"body": "<base64>", "content-encoding": "utf-8", "content-type": "application/json",
     "headers": {...}, "properties": {..., "delivery_info": {"exchange": "", "routing_key": q},
     "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}

``dumps_envelope`` / ``loads_envelope`` convert between the two. The SQLite and memory transports
store the same envelope text, so a message looks the same on every broker.

``loads_envelope`` accepts what kombu's reader accepts: ``properties.body_encoding`` ``"base64"``,
or absent / ``"utf-8"`` (then ``body`` is the serialised text itself). ``mark_redelivered`` is
kombu's restore step (``redelivered: true`` in headers and ``delivery_info``), and
``dumps_unacked`` / ``loads_unacked`` are the values of kombu's ``unacked`` hash
(``[envelope, exchange, routing_key]``). All JSON is written as kombu writes it, byte for byte.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from celeriac._internal.ids import new_id
from celeriac.exceptions import DecodeError
from celeriac.protocol.serialization import json_dumps, json_loads


def _str(value: Any) -> str:
    """The JSON text of ``value``, without the encoder's set-up for a str or an int."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    return str(value) if kind is int else json_dumps(value)


#: properties kombu's Redis channel sets itself, written last in this order
_MANAGED = ("delivery_info", "priority", "body_encoding", "delivery_tag")


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message as carried by a transport (bytes body, headers, properties)."""

    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        value = self.properties.get("priority")
        return int(value) if isinstance(value, (int, float)) else 0


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded kombu envelope: the message plus kombu's delivery bookkeeping."""

    message: RawMessage
    delivery_tag: str
    exchange: str
    routing_key: str
    redelivered: bool = False


def dumps_envelope(
    message: RawMessage, *, routing_key: str, exchange: str = "", delivery_tag: str | None = None
) -> bytes:
    """kombu's envelope JSON for ``message`` (base64 body, fresh uuid4 delivery tag by default).

    Properties keep their order, then kombu's own follow: ``delivery_info`` (exchange and
    routing key as published), ``priority`` (0 when unset), ``body_encoding``, ``delivery_tag``.
    Written in one pass: the parts are JSON-encoded and spliced into the envelope's fixed text
    (byte for byte what ``json.dumps`` of the envelope dict gives).
    """
    props = message.properties
    rest = {k: v for k, v in props.items() if k not in _MANAGED}
    tag = new_id() if delivery_tag is None else delivery_tag
    managed = (
        f'"delivery_info": {{"exchange": {_str(exchange)}, "routing_key": {_str(routing_key)}}}, '
        f'"priority": {_str(props.get("priority") or 0)}, '
        f'"body_encoding": "base64", "delivery_tag": {_str(tag)}}}'
    )
    properties = json_dumps(rest)[:-1] + ", " + managed if rest else "{" + managed
    text = (
        f'{{"body": "{binascii.b2a_base64(message.body, newline=False).decode("ascii")}", '
        f'"content-encoding": {_str(message.content_encoding)}, '
        f'"content-type": {_str(message.content_type)}, '
        f'"headers": {json_dumps(message.headers)}, "properties": {properties}}}'
    )
    return text.encode("ascii")


def _parse(data: bytes | str, what: str = "envelope") -> Any:
    try:
        return json_loads(data)
    except DecodeError as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}", field=what) from exc


def _decode_body(body: Any, encoding: Any) -> bytes:
    if not isinstance(body, str):
        raise DecodeError(f"envelope body must be a string, not {type(body).__name__}", "body")
    if encoding == "base64":
        try:
            return binascii.a2b_base64(body)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"envelope body is not valid base64: {exc}", field="body") from exc
    if encoding is None or encoding == "utf-8":
        return body.encode("utf-8")
    raise DecodeError(
        f"unknown body_encoding {encoding!r} (expected 'base64' or 'utf-8')",
        field="properties.body_encoding",
    )


def _text(value: Any, name: str, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be a string, not {type(value).__name__}", field=name)
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{name} must be an object, not {type(value).__name__}", field=name)
    return value


def loads_envelope(data: bytes | str) -> Envelope:
    """Parse kombu's envelope JSON; raises ``DecodeError`` naming the bad field."""
    payload = _mapping(_parse(data), "envelope")
    properties = _mapping(payload.get("properties"), "properties")
    headers = payload.get("headers")
    headers = {} if headers is None else _mapping(headers, "headers")
    body = _decode_body(payload.get("body"), properties.pop("body_encoding", None))
    info = _mapping(properties.get("delivery_info"), "properties.delivery_info")
    tag = properties.get("delivery_tag")
    if isinstance(tag, int) and not isinstance(tag, bool):
        tag = str(tag)
    if not isinstance(tag, str):
        raise DecodeError("envelope has no delivery_tag", field="properties.delivery_tag")
    message = RawMessage(
        body=body,
        content_type=_text(payload.get("content-type"), "content-type", "application/data"),
        content_encoding=_text(payload.get("content-encoding"), "content-encoding", "utf-8"),
        headers=headers,
        properties=properties,
    )
    return Envelope(
        message=message,
        delivery_tag=tag,
        exchange=_text(info.get("exchange"), "properties.delivery_info.exchange", ""),
        routing_key=_text(info.get("routing_key"), "properties.delivery_info.routing_key", ""),
        redelivered=bool(info.get("redelivered") or headers.get("redelivered")),
    )


def mark_redelivered(data: bytes | str) -> bytes:
    """The same envelope with ``redelivered: true`` in headers and delivery_info (kombu restore)."""
    payload = _mapping(_parse(data), "envelope")
    headers = payload.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    properties = payload.get("properties")
    info = properties.get("delivery_info") if isinstance(properties, dict) else None
    if isinstance(info, dict):
        info["redelivered"] = True
    return json_dumps(payload).encode("ascii")


def dumps_unacked(data: bytes | str, exchange: str, routing_key: str) -> bytes:
    """The value kombu stores in the ``unacked`` hash: ``[envelope, exchange, routing_key]``."""
    payload = _mapping(_parse(data), "envelope")
    return json_dumps([payload, exchange, routing_key]).encode("ascii")


def loads_unacked(data: bytes | str) -> tuple[bytes, str, str]:
    """Split an ``unacked`` hash value into (envelope JSON, exchange, routing_key)."""
    entry = _parse(data, "unacked")
    if not (isinstance(entry, list) and len(entry) == 3):
        raise DecodeError("unacked entry must be [envelope, exchange, routing_key]", "unacked")
    payload, exchange, routing_key = entry
    _mapping(payload, "envelope")
    return (
        json_dumps(payload).encode("ascii"),
        _text(exchange, "exchange", ""),
        _text(routing_key, "routing_key", ""),
    )
